"""The tracker's ``/metrics`` and ``/readiness``: announces (by route), handout sizes and the peer store's
state, read at scrape time; ready when an origin answers, whatever Redis does."""

from __future__ import annotations

from daemon_scrape import readiness, running, site_stub
from metrics_samples import requests, scrape, value
from tracker_fakes import App, announce_doc, peer
from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock

from kraken.net.metrics import Observation, new_registry, observed
from kraken.tracker.config import TrackerConfig
from kraken.tracker.stats import register_tracker, with_stats
from kraken.tracker.tap import tracker_service


def metrics_app() -> App:
    app = App()
    registry = new_registry()
    register_tracker(registry, app.store, app.http)
    observation = Observation(registry, {}, clock=app.clock, exact=frozenset({"/announce"}))
    app.stub = StubTreq(observed(with_stats(app.http.resource(), app.store), observation))
    return app


def test_announces_handouts_and_the_peer_store_are_series() -> None:
    app = metrics_app()
    for n in (1, 2, 3):
        assert app.announce(announce_doc(peer(n)))[0] == 200
    assert app.announce(announce_doc(peer(4, complete=True)))[0] == 200  # a seeder gets no handout
    assert app.request("POST", "/announce", data=b"not json")[0] == 400
    samples = scrape(app.stub)
    assert requests(samples, "/announce", "POST", "2xx") == 4.0
    assert requests(samples, "/announce", "POST", "4xx") == 1.0
    assert value(samples, "kraken_tracker_handouts_total") == 3.0
    assert value(samples, "kraken_tracker_handout_peers_total") == 0.0 + 1.0 + 2.0  # the ones before each
    assert value(samples, "kraken_tracker_handout_size_count") == 3.0  # the same handouts, as a histogram
    assert value(samples, "kraken_tracker_handout_size_sum") == 3.0
    assert value(samples, "kraken_tracker_handout_size_bucket", le="0.0") == 1.0
    assert value(samples, "kraken_tracker_handout_size_bucket", le="2.0") == 3.0
    assert value(samples, "kraken_http_request_duration_seconds_count", route="/announce") is None  # counted, not timed
    assert value(samples, "kraken_tracker_peers") == 4.0
    assert value(samples, "kraken_tracker_blobs") == 1.0
    assert value(samples, "kraken_tracker_peer_store_reachable") == 1.0
    assert value(samples, "kraken_tracker_peer_store_outages_total") == 0.0


def test_the_tracker_service_serves_metrics_and_readiness() -> None:
    reactor = MemoryReactorClock()
    top = tracker_service(TrackerConfig(), reactor)
    with running(top):
        stub = site_stub(reactor, 15003)
        assert value(scrape(stub), "kraken_tracker_peers") == 0.0
        # Nothing listens (a memory reactor): the origin does not answer.
        assert readiness(stub, reactor) == (503, {"ready": False, "error": "not ready: origin unreachable",
                                                  "down": ["origin"]})  # fmt: skip
