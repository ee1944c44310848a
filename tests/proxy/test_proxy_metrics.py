"""The proxy's ``/metrics`` (registry requests by route template) and ``/readiness`` (build-index and an
origin answer)."""

from __future__ import annotations

from pathlib import Path

import attrs
from daemon_scrape import get, readiness, running, site_stub
from metrics_samples import requests, scrape, value
from twisted.internet.testing import MemoryReactorClock

from kraken.proxy.config import ProxyConfig, UploadsConfig
from kraken.proxy.tap import proxy_service


def config(tmp_path: Path) -> ProxyConfig:
    return attrs.evolve(
        ProxyConfig(), listen_http="tcp:25000:interface=127.0.0.1", uploads=UploadsConfig(root=str(tmp_path / "up"))
    )


def test_registry_requests_are_counted_by_route_template(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    with running(proxy_service(config(tmp_path), reactor)):
        stub = site_stub(reactor, 25000)
        assert get(stub, "/v2/")[0] == 200
        assert get(stub, "/v2/a/b/blobs/uploads/nope")[0] == 404
        assert get(stub, "/v2/c/blobs/uploads/other")[0] == 404
        samples = scrape(stub)
    assert requests(samples, "/v2/", "GET", "2xx") == 1.0
    assert requests(samples, "/v2/<name>/blobs/uploads/<uuid>", "GET", "4xx") == 2.0  # the names are not labels


def test_the_proxy_is_not_ready_without_build_index_and_origin(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    with running(proxy_service(config(tmp_path), reactor)):
        code, doc = readiness(site_stub(reactor, 25000), reactor)
    assert (code, doc["down"]) == (503, ["build-index", "origin"])


def test_upload_streams_are_counted_by_outcome_unless_streaming_is_off(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    with running(proxy_service(config(tmp_path), reactor)):
        samples = scrape(site_stub(reactor, 25000))
    assert value(samples, "kraken_proxy_upload_streams_total", outcome="stored") == 0.0
    assert value(samples, "kraken_proxy_upload_streams_total", outcome="resent") == 0.0
    assert value(samples, "kraken_proxy_upload_streams_open") == 0.0
    off = attrs.evolve(config(tmp_path), uploads=UploadsConfig(root=str(tmp_path / "up"), stream_to_origin=False))
    reactor = MemoryReactorClock()
    with running(proxy_service(off, reactor)):
        samples = scrape(site_stub(reactor, 25000))
    assert value(samples, "kraken_proxy_upload_streams_open") is None
