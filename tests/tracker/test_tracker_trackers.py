"""Trackers: several real TrackerHTTP apps behind StubTreq, one of them killed; announces and metainfo fail over."""

from __future__ import annotations

from typing import Any

import pytest
from results import outcome_of, result_of
from routed_http import Routed
from tracker_fakes import NAMESPACE, App, blob, peer
from twisted.internet.error import ConnectionRefusedError

from kraken.cluster.ring import score
from kraken.cluster.services import ServiceHosts, ServiceHostsConfig
from kraken.net import HTTPClientConfig, RetryPolicy
from kraken.tracker.client import Trackers

CONFIG = HTTPClientConfig(retries=2, backoff=1.0, max_backoff=1.0, timeout=30.0)
URLS = ("http://tracker-1.test:15003", "http://tracker-2.test:15003")
INFO_HASH = "ab" * 32


class Fixture:
    def __init__(self) -> None:
        self.apps = {url: App(origin_peers=[peer(200, complete=True, origin=True)]) for url in URLS}
        self.clock = self.apps[URLS[0]].clock
        self.http = Routed({url: app.stub for url, app in self.apps.items()})
        hosts = ServiceHosts(
            ServiceHostsConfig(hosts=URLS, down_for=30.0),
            clock=self.clock,
            policy=RetryPolicy.from_config(CONFIG),
            kind="tracker",
        )
        self.trackers = Trackers(hosts, http=self.http, clock=self.clock, config=CONFIG)  # type: ignore[arg-type]

    def run(self, work: Any) -> Any:
        def pump() -> None:
            self.clock.advance(0.5)
            self.http.flush()

        return result_of(work, pump)

    def order(self, digest: Any) -> list[str]:
        key = digest.hex.encode("ascii")
        return sorted(URLS, key=lambda m: (-score(key, m), m))


@pytest.fixture
def fx() -> Any:
    f = Fixture()
    yield f
    assert [c for c in f.clock.getDelayedCalls() if c.active()] == []


def test_a_blob_goes_to_its_first_tracker(fx: Fixture) -> None:
    digest, _ = blob("x")
    first, second = fx.order(digest)
    fx.run(fx.trackers.announce(peer(1), NAMESPACE, digest, INFO_HASH))
    fx.run(fx.trackers.announce(peer(2), NAMESPACE, digest, INFO_HASH))
    assert fx.http.asked == [first, first]
    app = fx.apps[first]
    assert len(app.store.live(INFO_HASH, 10, app.clock.seconds())) == 2
    assert fx.apps[second].store.live(INFO_HASH, 10, app.clock.seconds()) == []


def test_announces_and_metainfo_move_to_the_next_tracker_when_the_first_dies(fx: Fixture) -> None:
    digest, info = fx.apps[URLS[0]].origin.add("m")
    fx.apps[URLS[1]].origin.add("m")
    first, second = fx.order(digest)
    assert fx.run(fx.trackers.metainfo(NAMESPACE, digest)) == info
    fx.run(fx.trackers.announce(peer(1, complete=True), NAMESPACE, digest, INFO_HASH))

    fx.http.dead.add(first)  # killed mid-pull
    fx.http.asked.clear()
    peers, interval = fx.run(fx.trackers.announce(peer(2), NAMESPACE, digest, INFO_HASH))
    assert interval == 3.0
    assert peer(200, complete=True, origin=True) in peers  # the second tracker hands out the origins
    assert fx.http.asked == [first, second]
    assert fx.trackers.hosts.health.is_down(first)

    # The next calls go straight to the second tracker, metainfo too.
    fx.http.asked.clear()
    assert fx.run(fx.trackers.metainfo(NAMESPACE, digest)) == info
    fx.run(fx.trackers.announce(peer(2), NAMESPACE, digest, INFO_HASH))
    assert fx.http.asked == [second, second]
    assert fx.trackers.hosts.failovers == 1


def test_health_is_any_tracker(fx: Fixture) -> None:
    assert fx.run(fx.trackers.health()) is True
    fx.http.dead.add(URLS[0])
    assert fx.run(fx.trackers.health()) is True
    fx.http.dead.add(URLS[1])
    assert fx.run(fx.trackers.health()) is False


def test_all_trackers_down_is_retried_then_raised(fx: Fixture) -> None:
    fx.http.dead.update(URLS)
    digest, _ = blob("x")
    failure = outcome_of(fx.trackers.announce(peer(2), NAMESPACE, digest, INFO_HASH), lambda: fx.clock.advance(0.5))
    assert failure.check(ConnectionRefusedError)
    assert fx.http.asked == fx.order(digest) * 3  # retries + 1 rounds, both trackers each
