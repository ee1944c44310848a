"""Options, service wiring and the twistd plugin of the build-index."""

from __future__ import annotations

import os
import threading
from typing import Any

import attrs
import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python import usage

from kraken.buildindex import tap
from kraken.buildindex.config import BuildIndexConfig
from kraken.buildindex.tags import TagStore

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write(path: Any, text: str) -> str:
    path.write_text(text)
    return str(path)


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def test_defaults_without_config() -> None:
    assert parse()["parsed"] == BuildIndexConfig()


def test_config_file(tmp_path: Any) -> None:
    path = write(
        tmp_path / "bi.yaml",
        "listen_http: 'tcp:0:interface=127.0.0.1'\norigin: http://o:1\ndatabase: /x/t.db\n"
        "max_manifest_size: 1MiB\nmax_page: 10\nhttp_client: {timeout: 2s}\n",
    )
    cfg = parse("--config", path)["parsed"]
    assert (cfg.origin, cfg.database, cfg.max_manifest_size, cfg.max_page) == ("http://o:1", "/x/t.db", 1 << 20, 10)
    assert cfg.http_client.timeout == 2.0


def test_example_config_parses() -> None:
    cfg = parse("--config", os.path.join(ROOT, "etc", "kraken", "build-index.yaml"))["parsed"]
    assert cfg.listen_http == "tcp:15004:interface=127.0.0.1"
    assert cfg.database == "/var/lib/kraken/build-index/tags.db"


@pytest.mark.parametrize(
    "text, key",
    [
        ("bogus: 1\n", "bogus"),
        ("http_client:\n  nope: 1\n", "http_client.nope"),
        ("max_manifest_size: lots\n", "max_manifest_size"),
        ("max_page: 0\n", "max_page"),
        ("origin: [1]\n", "origin"),
    ],
)
def test_bad_config_is_a_usage_error_naming_file_and_key(tmp_path: Any, text: str, key: str) -> None:
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(usage.UsageError) as info:
        parse("--config", path)
    assert path in str(info.value)
    assert key in str(info.value)


def test_unknown_key_in_extended_file_names_that_file(tmp_path: Any) -> None:
    base = write(tmp_path / "base.yaml", "surprise: true\n")
    path = write(tmp_path / "bi.yaml", "extends: base.yaml\nmax_page: 5\n")
    with pytest.raises(usage.UsageError) as info:
        parse("--config", path)
    assert base in str(info.value) and "surprise" in str(info.value)


def test_bad_endpoint_and_missing_file_are_usage_errors(tmp_path: Any) -> None:
    with pytest.raises(usage.UsageError, match="listen_http"):
        parse("--config", write(tmp_path / "e.yaml", "listen_http: 'nonsense:1'\n"))
    with pytest.raises(usage.UsageError, match="not found"):
        parse("--config", str(tmp_path / "absent.yaml"))


class ThreadReactor(MemoryReactorClock):
    """MemoryReactorClock plus a ``callFromThread`` that queues the call
    (the tag store's pool thread delivers results through it)."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []
        self._lock = threading.Lock()

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self.from_threads.append((f, args, kwargs))

    def run_thread_calls(self) -> None:
        with self._lock:
            calls, self.from_threads = self.from_threads, []
        for f, args, kwargs in calls:
            f(*args, **kwargs)


def test_service_wiring(tmp_path: Any) -> None:
    database = tmp_path / "state" / "build-index" / "tags.db"
    cfg = attrs.evolve(BuildIndexConfig(), listen_http="tcp:15004:interface=127.0.0.1", database=str(database))
    options = tap.Options()
    options["parsed"] = cfg
    reactor = ThreadReactor()
    service = tap.makeService(options, reactor=reactor)
    assert database.parent.is_dir()  # created
    assert next(s.name for s in service) == "tls-reload"  # SIGHUP reloads certificates, or is logged
    assert [s.name for s in service][1:] == ["tags", "http-client", "http"]
    assert isinstance(service.getServiceNamed("tags"), TagStore)

    stopped: list[Any] = []
    try:
        with capturedLogs() as events:
            service.privilegedStartService()
            service.startService()
        [(port, _factory, _backlog, interface)] = reactor.tcpServers
        assert (port, interface) == (15004, "127.0.0.1")
        listening = [e for e in events if e.get("component") == "build-index" and "address" in e]
        assert len(listening) == 1
        assert listening[0]["endpoint"] == cfg.listen_http
        assert listening[0]["database"] == str(database)
        assert listening[0]["origin"] == cfg.origin
    finally:
        # Always stop: the tag store's running pool thread would keep the test process alive at exit.
        service.stopService().addBoth(stopped.append)
    assert len(stopped) == 1 and all(ok for ok, _ in stopped[0]), stopped
    assert [c for c in reactor.getDelayedCalls() if c.active()] == []
    # the pool's thread has finished: the store opened the database on start
    with capturedLogs() as events:
        reactor.run_thread_calls()
    assert [e["log_format"] for e in events] == ["tag database {path} open"]
    assert database.exists()


# -- backends, writeback, cluster ---------------------------------------------------


def test_backends_writeback_and_cluster_keys(tmp_path: Any) -> None:
    path = write(
        tmp_path / "bi.yaml",
        "listen_http: 'tcp:15004:interface=10.0.0.1'\n"
        "backends:\n"
        "  - namespace: 'library/.*'\n"
        "    registry: {address: 'registry.example:5000'}\n"
        "  - namespace: '.*'\n"
        "    fs: {root: /srv/tags, name_path: docker_tag}\n"
        "writeback: {concurrency: 2, backoff_min: 2s, backoff_max: 1m}\n"
        "cluster:\n"
        "  nodes: ['http://10.0.0.1:15004', 'HTTP://10.0.0.2:15004/', 'http://10.0.0.3:15004']\n"
        "  duplicate_stagger: 5m\n"
        "  duplicate_backoff_max: 2m\n",
    )
    cfg = parse("--config", path)["parsed"]
    assert [b.kind()[0] for b in cfg.backends] == ["registry", "fs"]
    assert (cfg.writeback.concurrency, cfg.writeback.backoff_min, cfg.writeback.backoff_max) == (2, 2.0, 60.0)
    assert (cfg.cluster.duplicate_stagger, cfg.cluster.duplicate_backoff_max) == (300.0, 120.0)
    # this node (advertise derived from listen_http) is skipped; URLs are normalized
    assert cfg.cluster.self_url(cfg.listen_http) == "http://10.0.0.1:15004"
    assert cfg.cluster.neighbours(cfg.listen_http) == ["http://10.0.0.2:15004", "http://10.0.0.3:15004"]
    explicit = attrs.evolve(cfg.cluster, advertise="http://10.0.0.3:15004")
    assert explicit.neighbours(cfg.listen_http) == ["http://10.0.0.1:15004", "http://10.0.0.2:15004"]


@pytest.mark.parametrize(
    "text, key, message",
    [
        ("backends:\n  - namespace: '.*'\n    s3: {bucket: b, nonsense: 1}\n", "backends.0.s3.nonsense", "unknown key"),
        ("backends:\n  - namespace: '.*'\n    fs: {root: /x}\n", "backends.0.fs", "name_path"),
        ("backends:\n  - namespace: '('\n    fs: {root: /x, name_path: docker_tag}\n", "backends.0", "regular"),
        ("backends:\n  - namespace: '.*'\n", "backends.0", "exactly one backend kind"),
        ("writeback: {backoff_min: 10s, backoff_max: 1s}\n", "writeback", "backoff_max"),
        ("cluster: {nodes: ['bi-2:15004']}\n", "cluster", "nodes[0]"),
        ("cluster: {nodes: [http://a:1], advertise: 'ftp://x'}\n", "cluster", "advertise"),
        ("cluster: {duplicate_attempts: 0}\n", "cluster", "duplicate_attempts"),
        ("cluster: {duplicate_stagger: soon}\n", "cluster.duplicate_stagger", "duration"),
        ("cluster: {duplicate_backoff_max: 0s}\n", "cluster", "duplicate_backoff_max"),
    ],
)
def test_bad_backend_and_cluster_keys_name_file_and_key(tmp_path: Any, text: str, key: str, message: str) -> None:
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(usage.UsageError) as info:
        parse("--config", path)
    assert f"{path}: {key}" in str(info.value)
    assert message in str(info.value)


def test_service_wiring_with_backends_and_cluster(tmp_path: Any) -> None:
    database = tmp_path / "state" / "tags.db"
    scratch = tmp_path / "state" / "tag-scratch"
    scratch.mkdir(parents=True)
    (scratch / ".kraken-tag-leftover").write_text("x")
    text = (
        f"database: {database}\n"
        "backends:\n"
        f"  - namespace: '.*'\n    fs: {{root: {tmp_path / 'fs'}, name_path: sharded_docker_blob}}\n"
        "cluster:\n"
        "  nodes: ['http://127.0.0.1:15004', 'http://bi-2:15004']\n"
    )
    options = parse("--config", write(tmp_path / "bi.yaml", text))
    reactor = ThreadReactor()
    with capturedLogs() as events:
        service = tap.makeService(options, reactor=reactor)
    assert next(s.name for s in service) == "tls-reload"  # SIGHUP reloads certificates, or is logged
    assert [s.name for s in service][1:] == ["tags", "threads-io", "http-client", "writeback", "duplicate", "http"]
    assert list(scratch.iterdir()) == []  # swept
    assert service.getServiceNamed("duplicate").neighbours == ["http://bi-2:15004"]
    [cluster] = [e for e in events if "cluster" in e["log_format"]]
    assert cluster["me"] == "http://127.0.0.1:15004" and cluster["neighbours"] == ["http://bi-2:15004"]
    start_and_stop(service, reactor)


def start_and_stop(service: Any, reactor: ThreadReactor) -> None:
    """Start ``service`` and stop it: every child stops cleanly and leaves no timer behind."""
    stopped: list[Any] = []
    try:
        service.privilegedStartService()
        service.startService()
    finally:
        service.stopService().addBoth(stopped.append)
    assert len(stopped) == 1 and all(ok for ok, _ in stopped[0]), stopped
    reactor.run_thread_calls()
    assert [c for c in reactor.getDelayedCalls() if c.active()] == []
