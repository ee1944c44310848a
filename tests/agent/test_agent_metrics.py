"""The agent's ``/metrics`` (on its API listener: the scheduler's series and both listeners' requests) and
``/readiness`` (tracker and build-index answer)."""

from __future__ import annotations

from pathlib import Path

import attrs
from daemon_scrape import get, readiness, running, site_stub
from metrics_samples import requests, scrape, value
from twisted.internet.testing import MemoryReactorClock

from kraken.agent.config import AgentConfig, StoreConfig
from kraken.agent.tap import agent_service
from kraken.p2p.config import P2PConfig


def config(tmp_path: Path) -> AgentConfig:
    listen = {
        key: f"tcp:{port}:interface=127.0.0.1" for key, port in (("listen_registry", 26000), ("listen_api", 26002))
    }
    p2p = P2PConfig(listen="tcp:26001:interface=127.0.0.1")
    return attrs.evolve(AgentConfig(), store=StoreConfig(root=str(tmp_path / "state")), p2p=p2p, **listen)


def test_the_agent_counts_both_listeners_and_serves_the_scheduler_series(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    with running(agent_service(config(tmp_path), reactor)):
        registry, api = site_stub(reactor, 26000), site_stub(reactor, 26002)
        assert get(registry, "/v2/")[0] == 200
        assert get(registry, "/v2/library/alpine/manifests/latest", "DELETE")[0] == 405  # read-only
        assert get(api, "/health")[0] == 200
        assert get(registry, "/metrics")[0] == 404  # /metrics is the API's, not the registry's
        samples = scrape(api)
    assert requests(samples, "/v2/", "GET", "2xx") == 1.0
    assert requests(samples, "/v2/<name>/manifests/<reference>", "DELETE", "4xx") == 1.0
    assert requests(samples, "/health", "GET", "2xx") == 1.0
    assert value(samples, "kraken_p2p_torrents") == 0.0
    assert value(samples, "kraken_p2p_received_bytes_total", source="agent") == 0.0


def test_the_agent_is_not_ready_without_tracker_and_build_index(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    with running(agent_service(config(tmp_path), reactor)):
        code, doc = readiness(site_stub(reactor, 26002), reactor)
    assert (code, doc["ready"], doc["down"]) == (503, False, ["tracker", "build-index"])
