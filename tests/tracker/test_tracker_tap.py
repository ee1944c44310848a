"""Options parsing and the service wiring, on a MemoryReactorClock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python import usage

from kraken.net import HTTPClientService
from kraken.origin.client import ClusterClient
from kraken.tracker import tap
from kraken.tracker.config import TrackerConfig
from kraken.tracker.origins import OriginPeers
from kraken.tracker.peers import MemoryPeerStore
from kraken.tracker.tap import Options, makeService, tracker_service

REPO = Path(__file__).resolve().parents[2]
PEER_ID = "0123456789abcdef0123456789abcdef01234567"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tracker.yaml"
    path.write_text(text)
    return str(path)


def test_options_parse_the_config(tmp_path: Path) -> None:
    path = write(tmp_path, "peer_ttl: 10m\nmax_peers: 20\norigin_peers_cache_ttl: 30s\norigin_peers_cache_size: 5\n")
    options = Options()
    options.parseOptions(["--config", path])
    parsed = options["parsed"]
    assert isinstance(parsed, TrackerConfig)
    assert (parsed.peer_ttl, parsed.max_peers) == (600.0, 20)
    assert (parsed.origin_peers_cache_ttl, parsed.origin_peers_cache_size) == (30.0, 5)


def test_options_without_config_use_the_defaults() -> None:
    options = Options()
    options.parseOptions([])
    assert options["parsed"] == TrackerConfig()
    assert options["parsed"].listen_http == "tcp:15003:interface=127.0.0.1"


def test_the_example_config_loads() -> None:
    options = Options()
    options.parseOptions(["--config", str(REPO / "etc" / "kraken" / "tracker.yaml")])
    assert options["parsed"].announce_interval == 3.0


def test_unknown_key_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, "http_client:\n  timeout: 5s\n  timout: 5s\n")
    with pytest.raises(usage.UsageError) as e:
        Options().parseOptions(["-c", path])
    assert path in str(e.value)
    assert "http_client.timout" in str(e.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("listen_http: 'tcp:notaport'\n", "listen_http"),
        ("max_peers: 0\n", "max_peers"),
        ("peer_ttl: forever\n", "peer_ttl"),
        ("origin_peers_cache_ttl: 0s\n", "origin_peers_cache_ttl"),
        ("origin_peers_cache_size: 0\n", "origin_peers_cache_size"),
        # The static list is gone: origins say themselves which blobs they seed.
        (f"origin_peers: [{{peer_id: '{PEER_ID}', address: '10.0.0.1:1'}}]\n", "origin_peers"),
    ],
)
def test_bad_values_are_usage_errors(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(usage.UsageError, match=key):
        Options().parseOptions(["--config", write(tmp_path, text)])


def test_defaults() -> None:
    config = TrackerConfig()
    assert (config.origin_peers_cache_ttl, config.origin_peers_cache_size) == (10.0, 10_000)


def test_service_wiring() -> None:
    reactor = MemoryReactorClock()
    top = tracker_service(TrackerConfig(peer_ttl=60.0), reactor)
    everything = list(top)
    assert everything[0].name == "tls-reload"  # SIGHUP reloads certificates, or is logged: never a stop
    children = everything[1:]
    assert [type(c) for c in children[:2]] == [MemoryPeerStore, HTTPClientService]
    assert [c.name for c in children] == ["peer-store", "http-client", "http"]
    store = top.getServiceNamed("peer-store")
    assert store.clock is reactor
    assert store.step == 30.0

    stopped: list[Any] = []
    try:
        with capturedLogs() as events:
            top.privilegedStartService()
            top.startService()
        [(port, _factory, _backlog, interface)] = reactor.tcpServers
        assert (port, interface) == (15003, "127.0.0.1")
        [listening] = [e for e in events if e.get("component") == "tracker" and "address" in e]
        assert listening["address"].endswith(":15003")
        assert any(c.active() for c in reactor.getDelayedCalls()), "the expiry sweep is scheduled"
    finally:
        top.stopService().addBoth(stopped.append)
    [results] = stopped
    assert all(ok for ok, _ in results), results
    assert [c for c in reactor.getDelayedCalls() if c.active()] == []
    assert not top.running


def test_make_service_uses_the_given_reactor() -> None:
    options = Options()
    options.parseOptions([])
    reactor = MemoryReactorClock()
    top = makeService(options, reactor=reactor)
    try:
        top.privilegedStartService()
        top.startService()
        assert reactor.tcpServers[0][0] == 15003
    finally:
        top.stopService()
    assert [c for c in reactor.getDelayedCalls() if c.active()] == []


def test_origin_peers_are_asked_of_the_origin_client(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[Any, dict[str, Any]]] = []

    class Recording(OriginPeers):
        def __init__(self, source: Any, **kwargs: Any) -> None:
            made.append((source, kwargs))
            super().__init__(source, **kwargs)

    monkeypatch.setattr(tap, "OriginPeers", Recording)
    reactor = MemoryReactorClock()
    tracker_service(TrackerConfig(origin_peers_cache_ttl=7.0, origin_peers_cache_size=3), reactor)
    [(source, kwargs)] = made
    assert isinstance(source, ClusterClient)
    assert kwargs == {"clock": reactor, "ttl": 7.0, "size": 3}
