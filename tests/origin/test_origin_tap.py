"""Options parsing and the service wiring, on a MemoryReactorClock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.python.failure import Failure

from kraken.backends import FSBackend
from kraken.backends.config import BackendConfig, FSBackendConfig
from kraken.cluster.config import ClusterConfig
from kraken.net import HTTPClientService
from kraken.origin import tap
from kraken.origin.cluster import OriginRing
from kraken.origin.config import CleanupConfig, OriginConfig, StoreConfig, WriteBackConfig
from kraken.origin.fetch import BlobFetcher
from kraken.origin.node import OriginNode
from kraken.origin.tap import Options, makeService, origin_service
from kraken.origin.writeback import WriteBackQueue
from kraken.p2p.config import BandwidthConfig, OriginP2PConfig, P2PConfig
from kraken.p2p.scheduler import Scheduler
from kraken.store import CacheCleanup, UploadExpiry
from kraken.workers import ThreadPoolService


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "origin.yaml"
    path.write_text(text)
    return str(path)


def test_options_parse_the_config(tmp_path: Path) -> None:
    path = write(tmp_path, f"store: {{root: {tmp_path / 'state'}}}\nlisten_http: 'tcp:0:interface=127.0.0.1'\n")
    options = Options()
    options.parseOptions(["--config", path])
    parsed = options["parsed"]
    assert isinstance(parsed, OriginConfig)
    assert parsed.store.root == str(tmp_path / "state")


def test_options_without_config_use_the_defaults() -> None:
    options = Options()
    options.parseOptions([])
    assert options["parsed"] == OriginConfig()


def test_unknown_key_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, "store:\n  root: /x\n  piece_length: 4MiB\n")
    with pytest.raises(usage.UsageError) as e:
        Options().parseOptions(["-c", path])
    assert path in str(e.value)
    assert "store.piece_length" in str(e.value)


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="file not found"):
        Options().parseOptions(["--config", str(tmp_path / "nope.yaml")])


def test_bad_endpoint_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, "listen_http: 'tcp:notaport'\nadvertise: 'o:1'\n")
    with pytest.raises(usage.UsageError, match="listen_http"):
        Options().parseOptions(["--config", path])


def config(tmp_path: Path) -> OriginConfig:
    return OriginConfig(
        listen_http="tcp:15999:interface=127.0.0.1",
        store=StoreConfig(root=str(tmp_path / "state")),
        p2p=OriginP2PConfig(listen="tcp:15998:interface=127.0.0.1", bandwidth=BandwidthConfig(enabled=False)),
    )


def test_service_wiring(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    top = origin_service(config(tmp_path), reactor)
    everything = list(top)
    assert everything[0].name == "tls-reload"  # SIGHUP reloads certificates, or is logged: never a stop
    children = everything[1:]
    assert [type(c) for c in children[:6]] == [
        ThreadPoolService, ThreadPoolService, HTTPClientService, OriginRing, UploadExpiry, Scheduler,
    ]  # fmt: skip
    assert [c.name for c in children] == [
        "threads-cpu",
        "threads-io",
        "http-client",
        "cluster",
        "upload-expiry",
        "scheduler",
        "http",
        "p2p",
    ]
    assert (tmp_path / "state" / "cache").is_dir()

    stopped: list[Any] = []
    try:
        with capturedLogs() as events:
            top.privilegedStartService()
            top.startService()
        assert [(port, interface) for port, _f, _b, interface in reactor.tcpServers] == [
            (15999, "127.0.0.1"), (15998, "127.0.0.1"),
        ]  # fmt: skip
        [listening] = [e for e in events if e.get("component") == "origin" and "address" in e]
        assert listening["address"].endswith(":15999")
        assert listening["advertise"] == "127.0.0.1:15999"
        [p2p] = [e for e in events if e.get("component") == "origin P2P" and "address" in e]
        assert p2p["advertise"] == "127.0.0.1:15998"
        assert p2p["peer_id"] == P2PConfig(advertise="127.0.0.1:15998").the_peer_id()
        assert any(c.active() for c in reactor.getDelayedCalls()), "the expiry timer is scheduled"
    finally:
        # Always stop: running pool threads would keep the test process alive.
        top.stopService().addBoth(stopped.append)
    [results] = stopped  # fired at once: starting did no work in the pools
    assert all(ok for ok, _ in results), results
    assert [c for c in reactor.getDelayedCalls() if c.active()] == []
    assert not top.running


def test_expiry_runs_on_the_clock(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    reactor = MemoryReactorClock()
    top = origin_service(cfg, reactor)
    timer = top.getServiceNamed("upload-expiry")
    assert timer.step == 300.0  # a quarter of the 1 h TTL, capped at 5 min
    assert timer.clock is reactor


def test_make_service_uses_the_given_reactor(tmp_path: Path) -> None:
    options = Options()
    options.parseOptions(["--config", write(tmp_path, f"store: {{root: {tmp_path / 'state'}}}\n")])
    reactor = MemoryReactorClock()
    top = makeService(options, reactor=reactor)
    top.privilegedStartService()
    assert reactor.tcpServers[0][0] == 15002


def successResultOf(d: Any) -> Any:
    if not isinstance(d, Deferred):
        d = Deferred.fromCoroutine(d)
    out: list[Any] = []
    d.addBoth(out.append)
    assert out and not isinstance(out[0], Failure), out
    return out[0]


def test_backends_add_the_write_back_queue(tmp_path: Path) -> None:
    cfg = attrs.evolve(
        config(tmp_path),
        backends=(BackendConfig(".*", fs=FSBackendConfig(str(tmp_path / "registry"), "sharded_docker_blob")),),
        writeback=WriteBackConfig(concurrency=2),
    )
    top = origin_service(cfg, MemoryReactorClock())
    names = [c.name for c in top]
    assert names.index("http-client") < names.index("writeback") < names.index("upload-expiry")
    queue = top.getServiceNamed("writeback")
    assert isinstance(queue, WriteBackQueue)
    assert (tmp_path / "state").is_dir()  # the database's directory (the file opens at start)
    [(pattern, backend)] = queue._router.routes
    assert pattern.pattern == ".*" and isinstance(backend, FSBackend)
    assert queue._concurrency == 2


def test_no_backends_no_write_back_queue(tmp_path: Path) -> None:
    top = origin_service(config(tmp_path), MemoryReactorClock())
    assert "writeback" not in [c.name for c in top]


def test_backends_add_the_fetcher(tmp_path: Path) -> None:
    cfg = attrs.evolve(
        config(tmp_path),
        backends=(BackendConfig(".*", fs=FSBackendConfig(str(tmp_path / "registry"), "sharded_docker_blob")),),
    )
    top = origin_service(cfg, MemoryReactorClock())
    names = [c.name for c in top]
    assert names.index("http-client") < names.index("fetcher") < names.index("http")
    fetcher = top.getServiceNamed("fetcher")
    assert isinstance(fetcher, BlobFetcher)
    [(_, backend)] = fetcher._router.routes
    assert isinstance(backend, FSBackend)
    # A P2P handshake for a missing blob starts the same fetch: the scheduler asks the node, which asks the fetcher.
    on_missing = top.getServiceNamed("scheduler")._on_missing
    node = on_missing.__self__
    assert isinstance(node, OriginNode) and on_missing == node.on_missing and node.fetcher is fetcher


def test_no_backends_no_fetcher(tmp_path: Path) -> None:
    top = origin_service(config(tmp_path), MemoryReactorClock())
    assert "fetcher" not in [c.name for c in top]


def with_backend(tmp_path: Path, **kw: Any) -> OriginConfig:
    return attrs.evolve(
        config(tmp_path),
        backends=(BackendConfig(".*", fs=FSBackendConfig(str(tmp_path / "registry"), "sharded_docker_blob")),),
        **kw,
    )


def test_no_backends_no_cleanup(tmp_path: Path) -> None:
    top = origin_service(config(tmp_path), MemoryReactorClock())
    assert "cache-cleanup" not in [c.name for c in top], "evicting would lose the only copy"


def test_backends_add_the_cleanup_keeping_pending_write_backs(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    cfg = with_backend(tmp_path, cleanup=CleanupConfig(interval=600.0, tti=7200.0, aggressive_threshold=90))
    top = origin_service(cfg, reactor)
    names = [c.name for c in top]
    assert names.index("writeback") < names.index("upload-expiry") < names.index("cache-cleanup")
    assert names.index("cache-cleanup") < names.index("scheduler")
    cleanup = top.getServiceNamed("cache-cleanup")
    assert isinstance(cleanup, CacheCleanup)
    assert cleanup.step == 600.0 and cleanup.clock is reactor
    assert cleanup._root == str(tmp_path / "state")
    assert (cleanup._tti, cleanup._aggressive_threshold, cleanup._aggressive_tti) == (7200.0, 90, 3600.0)
    assert cleanup._keep == top.getServiceNamed("writeback").pending


def test_backends_with_cleanup_disabled(tmp_path: Path) -> None:
    top = origin_service(with_backend(tmp_path, cleanup=CleanupConfig(enabled=False)), MemoryReactorClock())
    assert "cache-cleanup" not in [c.name for c in top]


def test_cleanup_enabled_without_backends_keeps_nothing_and_warns(tmp_path: Path) -> None:
    from kraken.core import Digest

    cfg = attrs.evolve(config(tmp_path), cleanup=CleanupConfig(enabled=True))
    with capturedLogs() as events:
        top = origin_service(cfg, MemoryReactorClock())
    cleanup = top.getServiceNamed("cache-cleanup")
    assert cleanup._keep(Digest.from_bytes(b"x")) is False
    assert any("without backends" in e["log_format"] for e in events)


def test_no_backends_no_p2p_fetch(tmp_path: Path) -> None:
    top = origin_service(config(tmp_path), MemoryReactorClock())
    assert top.getServiceNamed("scheduler")._on_missing is None


def dns_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, members: list[str]) -> OriginConfig:
    """An origin in a DNS-listed cluster whose name resolves to ``members``."""

    def resolver(reactor: Any) -> Any:
        async def resolve(name: str) -> list[str]:
            return members

        return resolve

    monkeypatch.setattr(tap, "system_resolver", resolver)
    return attrs.evolve(config(tmp_path), advertise="10.0.0.1:15999", cluster=ClusterConfig(dns="origins.test:15999"))


def test_an_origin_that_cannot_join_its_cluster_stops_only_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in the herd: the origin beside other daemons, under one parent, on one reactor.
    reactor = MemoryReactorClock()
    herd = MultiService()
    origin = origin_service(dns_cluster(tmp_path, monkeypatch, ["10.0.0.2"]), reactor)
    origin.setServiceParent(herd)
    other = Service()
    other.setName("tracker")
    other.setServiceParent(herd)
    with capturedLogs() as events:
        herd.privilegedStartService()
        herd.startService()
        assert origin.running  # it stops on the next turn, not while the herd starts its children
        reactor.advance(0)
    assert not origin.running and origin.parent is None
    assert other.running and herd.running and list(herd) == [other]
    assert not reactor.hasStopped
    [why] = [e for e in events if e["log_format"].startswith("origin stopping its own service")]
    assert "do not include this origin (10.0.0.1:15999)" in why["why"]
    assert [c for c in reactor.getDelayedCalls() if c.active()] == []
    herd.stopService()


def test_a_standalone_origin_that_cannot_join_its_cluster_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = Options()
    options.parseOptions([])
    options["parsed"] = dns_cluster(tmp_path, monkeypatch, ["10.0.0.2"])
    reactor = MemoryReactorClock()
    reactor.running = True
    top = makeService(options, reactor=reactor)
    top.privilegedStartService()
    top.startService()
    reactor.advance(0)
    assert not top.running and reactor.hasStopped


def test_an_origin_that_finds_itself_runs_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reactor = MemoryReactorClock()
    top = origin_service(dns_cluster(tmp_path, monkeypatch, ["10.0.0.1", "10.0.0.2"]), reactor)
    top.privilegedStartService()
    top.startService()
    reactor.advance(0)
    assert top.running
    top.stopService()
