"""OriginConfig: defaults, YAML, validation with file and key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from kraken import config as kconfig
from kraken.backends.config import BackendConfig, FSBackendConfig
from kraken.core import PieceLengthRule
from kraken.net import HTTPClientConfig
from kraken.origin.config import CleanupConfig, OriginConfig, WriteBackConfig

REPO = Path(__file__).resolve().parents[2]


def build(tmp_path: Path, text: str) -> OriginConfig:
    path = tmp_path / "origin.yaml"
    path.write_text(text)
    return kconfig.build(OriginConfig, kconfig.load(str(path)))


def test_defaults() -> None:
    cfg = OriginConfig()
    assert cfg.listen_http == "tcp:15002:interface=127.0.0.1"
    assert cfg.store.root == "/var/lib/kraken/origin"
    assert cfg.store.piece_rule() == PieceLengthRule.default()
    assert cfg.upload_ttl == 3600.0
    assert (cfg.threads.cpu, cfg.threads.io) == (2, 4)
    assert cfg.http_client == HTTPClientConfig()
    assert cfg.advertised() == "127.0.0.1:15002"
    assert cfg.backends == ()
    assert cfg.writeback == WriteBackConfig(database=None, concurrency=4, backoff_min=1.0, backoff_max=300.0)
    assert cfg.writeback_database() == "/var/lib/kraken/origin/writeback.db"
    assert cfg.p2p.super_seed  # origins super-seed; agents do not


def test_example_config_matches_the_defaults() -> None:
    cfg = kconfig.build(OriginConfig, kconfig.load(str(REPO / "etc/kraken/origin.yaml")))
    assert cfg == OriginConfig()


def test_yaml_values(tmp_path: Path) -> None:
    cfg = build(
        tmp_path,
        """
listen_http: "tcp:0:interface=127.0.0.1"
advertise: "origin-1:15002"
store:
  root: /srv/origin
  piece_lengths: {0: 1MiB, 1GiB: 2MiB}
upload_ttl: 10m
threads: {cpu: 1, io: 8}
http_client: {timeout: 5s}
""",
    )
    assert cfg.advertised() == "origin-1:15002"
    assert cfg.store.root == "/srv/origin"
    assert cfg.store.piece_rule().piece_length(1 << 30) == 2 << 20
    assert cfg.store.piece_rule().piece_length(5) == 1 << 20
    assert cfg.upload_ttl == 600.0
    assert cfg.threads.io == 8
    assert cfg.http_client.timeout == 5.0


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("store: {rooot: /x}", "store.rooot"),
        ("store: {piece_lengths: {1MiB: 4MiB}}", "store: piece_lengths"),  # no step for size 0
        ("store: {piece_lengths: {0: lots}}", "store.piece_lengths.0"),
        ("upload_ttl: soon", "upload_ttl"),
        ("upload_ttl: 0s", "upload_ttl"),
        ("threads: {cpu: 0}", "threads"),
        ("listen_http: 'unix:/run/origin.sock'", "<config>"),  # nothing to advertise
        ("writeback: {retries: 3}", "writeback.retries"),
        ("writeback: {concurrency: 0}", "writeback"),
        ("writeback: {backoff_min: soon}", "writeback.backoff_min"),
        ("writeback: {backoff_min: 10m, backoff_max: 1m}", "writeback"),
        ("backends: {namespace: '.*'}", "backends"),  # a list, not a map
        ("backends: [{namespace: '(', fs: {root: /x, name_path: identity}}]", "backends.0"),
        ("backends: [{namespace: '.*'}]", "backends.0"),  # no backend kind
        ("backends: [{namespace: '.*', fs: {root: /x, name_path: nope}}]", "backends.0.fs"),
        ("backends: [{namespace: '.*', fs: {root: /x, name_path: identity, extra: 1}}]", "backends.0.fs.extra"),
        ("cleanup: {ttl: 1h}", "cleanup.ttl"),
        ("cleanup: {enabled: yes please}", "cleanup.enabled"),
        ("cleanup: {interval: 0s}", "cleanup"),
        ("cleanup: {tti: soon}", "cleanup.tti"),
        ("cleanup: {aggressive_threshold: 0}", "cleanup"),
        ("cleanup: {aggressive_threshold: 101}", "cleanup"),
        ("cleanup: {aggressive_threshold: 80%}", "cleanup.aggressive_threshold"),
        ("cleanup: {tti: 1h, aggressive_tti: 2h}", "cleanup"),
        ("repair: {interval: 0s}", "repair"),
        ("repair: {grace: -1}", "repair"),
        ("repair: {concurrency: 0}", "repair"),
        ("repair: {rate: fast}", "repair.rate"),
        ("repair: {every: 1h}", "repair.every"),
    ],
)
def test_bad_values_name_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(kconfig.ConfigError) as e:
        build(tmp_path, text)
    message = str(e.value)
    assert "origin.yaml" in message
    if key != "<config>":
        assert key in message


def test_unspecified_interface_advertises_the_host_name() -> None:
    import socket

    assert OriginConfig(listen_http="tcp:15002").advertised() == f"{socket.gethostname()}:15002"


def test_a_partial_p2p_section_keeps_the_origins_own_defaults(tmp_path) -> None:
    path = tmp_path / "origin.yaml"
    path.write_text("p2p: {advertise: '10.0.0.5:15001', conn_tti: 10s}\n")
    cfg = kconfig.build(OriginConfig, kconfig.load(str(path)))
    assert cfg.p2p.listen == "tcp:15001"  # not the agent's 16001
    assert not cfg.p2p.bandwidth.enabled  # origins seed without a limit unless told
    assert cfg.p2p.conn_tti == 10.0 and cfg.p2p.advertised() == ("10.0.0.5", 15001)


def test_backends_and_writeback(tmp_path: Path) -> None:
    cfg = build(
        tmp_path,
        """
store: {root: /srv/origin}
backends:
  - namespace: "library/.*"
    fs: {root: /srv/registry, name_path: sharded_docker_blob}
  - namespace: ".*"
    fs: {root: /srv/other, name_path: identity}
writeback: {concurrency: 2, backoff_min: 500ms, backoff_max: 1m}
""",
    )
    assert cfg.backends == (
        BackendConfig("library/.*", fs=FSBackendConfig(root="/srv/registry", name_path="sharded_docker_blob")),
        BackendConfig(namespace=".*", fs=FSBackendConfig(root="/srv/other", name_path="identity")),
    )
    assert cfg.writeback == WriteBackConfig(concurrency=2, backoff_min=0.5, backoff_max=60.0)
    assert cfg.writeback_database() == "/srv/origin/writeback.db"
    assert OriginConfig(writeback=WriteBackConfig(database="/x/wb.db")).writeback_database() == "/x/wb.db"


def test_cleanup_defaults() -> None:
    cfg = OriginConfig()
    assert cfg.cleanup == CleanupConfig(
        enabled=None, interval=1800.0, tti=21600.0, aggressive_threshold=80, aggressive_tti=3600.0
    )


def test_cleanup_is_off_without_backends_unless_enabled() -> None:
    backend = BackendConfig(".*", fs=FSBackendConfig(root="/srv/registry", name_path="sharded_docker_blob"))
    assert not OriginConfig().cleanup_enabled(), "the cache holds the only copy"
    assert OriginConfig(backends=(backend,)).cleanup_enabled()
    assert OriginConfig(cleanup=CleanupConfig(enabled=True)).cleanup_enabled()
    assert not OriginConfig(backends=(backend,), cleanup=CleanupConfig(enabled=False)).cleanup_enabled()


def test_cleanup_yaml_values(tmp_path: Path) -> None:
    cfg = build(
        tmp_path,
        "cleanup: {enabled: true, interval: 5m, tti: 2h, aggressive_threshold: 90, aggressive_tti: 10m}\n",
    )
    assert cfg.cleanup == CleanupConfig(
        enabled=True, interval=300.0, tti=7200.0, aggressive_threshold=90, aggressive_tti=600.0
    )
    assert cfg.cleanup_enabled()


def test_a_tls_ring_must_call_its_members_over_https(tmp_path: Path) -> None:
    import trustme
    from tls_files import write_ca, write_pair

    ca = trustme.CA()
    cert, key = write_pair(tmp_path / "tls", ca, "origin")
    ring = f"tls: {{ca: {write_ca(tmp_path / 'tls', ca)}, cert: {cert}, key: {key}}}\n"
    ring += "listen_http: tcp:15002:interface=127.0.0.1\n"
    with pytest.raises(kconfig.ConfigError) as e:
        build(tmp_path, ring + "cluster: {hosts: ['127.0.0.1:15002']}")
    assert "origin.yaml" in str(e.value) and "cluster.scheme" in str(e.value)
    assert build(tmp_path, ring + "cluster: {hosts: ['127.0.0.1:15002'], scheme: https}").cluster is not None
