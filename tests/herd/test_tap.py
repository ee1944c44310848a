"""The herd's config defaults and its service wiring (no sockets)."""

import os

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from kraken import config
from kraken.herd.tap import Options, herd_config, herd_service


def options(*argv):
    o = Options()
    o.parseOptions(list(argv))
    return o


def test_defaults_follow_the_design_ports_and_state_dir(tmp_path):
    cfg = options("--state-dir", str(tmp_path))["parsed"]
    assert cfg.state_dir == str(tmp_path)
    assert cfg.proxy.listen_http == "tcp:15000:interface=127.0.0.1"
    assert cfg.origin.listen_http == "tcp:15002:interface=127.0.0.1"
    assert cfg.build_index.listen_http == "tcp:15004:interface=127.0.0.1"
    assert cfg.origin.store.root == os.path.join(tmp_path, "origin")
    assert cfg.build_index.database == os.path.join(tmp_path, "build-index", "tags.db")
    assert cfg.proxy.uploads.root == os.path.join(tmp_path, "proxy", "uploads")
    assert cfg.proxy.origin == cfg.build_index.origin == "http://127.0.0.1:15002"
    assert cfg.proxy.build_index == "http://127.0.0.1:15004"


def test_components_follow_moved_listeners(tmp_path):
    path = tmp_path / "herd.yaml"
    path.write_text(
        f"state_dir: {tmp_path}/s\n"
        "origin: {listen_http: 'tcp:25002:interface=127.0.0.1'}\n"
        "build_index: {listen_http: 'tcp:25004'}\n"
        "proxy: {registry: {max_manifest_size: 1MiB}}\n"
    )
    cfg = herd_config(config.load(str(path)))
    assert cfg.proxy.origin == cfg.build_index.origin == "http://127.0.0.1:25002"
    assert cfg.proxy.build_index == "http://127.0.0.1:25004"
    assert cfg.proxy.registry.max_manifest_size == 1 << 20
    assert cfg.origin.store.root == f"{tmp_path}/s/origin"


@pytest.mark.parametrize(
    "text,where",
    [
        ("bogus: 1\n", ": bogus: unknown key"),
        ("proxy: {uploads: {tll: 1h}}\n", ": proxy.uploads.tll: unknown key"),
        ("origin: {store: {piece_lengths: {0: lots}}}\n", ": origin.store.piece_lengths.0: not a size"),
        ("build_index: {max_page: many}\n", ": build_index.max_page: must be an integer"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, where):
    path = tmp_path / "herd.yaml"
    path.write_text(text)
    with pytest.raises(usage.UsageError) as e:
        options("--config", str(path), "--state-dir", str(tmp_path))
    assert str(e.value).startswith(f"{path}{where}")


def test_service_listens_on_three_ports_and_stops_cleanly(tmp_path):
    reactor = MemoryReactorClock()
    herd = herd_service(options("--state-dir", str(tmp_path))["parsed"], reactor)
    herd.privilegedStartService()
    herd.startService()
    assert sorted(port for port, *_ in reactor.tcpServers) == [15000, 15002, 15004]
    assert {s.name for s in herd} == {"origin", "build-index", "proxy"}
    herd.stopService()
    assert [c for c in reactor.getDelayedCalls() if c.active()] == []
