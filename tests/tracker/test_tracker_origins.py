"""OriginPeers: the origins seeding a blob, asked of the origin, cached on a Clock."""

from __future__ import annotations

from typing import Any

import pytest
from tracker_fakes import FakeOrigin, blob, peer, result_of
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from kraken.net import HTTPStatusError
from kraken.tracker.origins import OriginPeers

SEEDER = peer(200, complete=True, origin=True)
DIGEST = blob("a")[0]


class Fixture:
    def __init__(self, **kwargs: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.origin = FakeOrigin()
        self.origin.seeders = [SEEDER]
        self.peers = OriginPeers(self.origin, clock=self.clock, **{"ttl": 10.0, "size": 100, **kwargs})

    def get(self, digest: Any = DIGEST) -> Any:
        return result_of(self.peers.get(digest))

    def idle(self) -> bool:
        return not [c for c in self.clock.getDelayedCalls() if c.active()]


@pytest.fixture
def fx() -> Fixture:
    return Fixture()


def outcome(d: Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def test_miss_then_hit_then_expiry(fx: Fixture) -> None:
    assert fx.get() == [SEEDER]
    fx.clock.advance(9.9)
    assert fx.get() == [SEEDER]
    assert fx.origin.peer_calls == [DIGEST]
    fx.origin.seeders = []  # the origin dropped the blob
    fx.clock.advance(0.1)  # 10 s: stale
    assert fx.get() == []
    assert fx.origin.peer_calls == [DIGEST, DIGEST]
    assert fx.peers.fetches == 2
    assert fx.idle(), "no wait timers are left behind"


def test_cached_per_digest(fx: Fixture) -> None:
    other = blob("b")[0]
    fx.origin.seeds[other] = []
    assert fx.get() == [SEEDER]
    assert fx.get(other) == []
    assert fx.origin.peer_calls == [DIGEST, other]
    assert len(fx.peers) == 2


def test_answers_are_handed_out_as_origins(fx: Fixture) -> None:
    fx.origin.seeders = [peer(201)]  # however the origin described itself
    [got] = fx.get()
    assert (got.peer_id, got.complete, got.origin) == (peer(201).peer_id, True, True)


def test_callers_cannot_change_the_cache(fx: Fixture) -> None:
    fx.get().append(peer(5))
    assert fx.get() == [SEEDER]


def test_failures_answer_nothing_are_logged_and_are_cached_for_a_second(fx: Fixture) -> None:
    fx.origin.peers_error = HTTPStatusError("GET", "http://origin/blobs/x/peers", 500, b"broken")
    with capturedLogs() as events:
        assert fx.get() == []
        assert fx.get() == []
    assert fx.origin.peer_calls == [DIGEST], "the failure is cached"
    [warning] = [e for e in events if "digest" in e]
    assert warning["digest"] == str(DIGEST)
    assert "500" in warning["error"]
    assert fx.peers.failures == 1
    fx.origin.peers_error = None
    fx.clock.advance(0.9)
    assert fx.get() == []
    fx.clock.advance(0.1)  # 1 s: asked again
    assert fx.get() == [SEEDER]
    assert len(fx.origin.peer_calls) == 2
    fx.clock.advance(9.9)
    assert fx.get() == [SEEDER], "a success is cached for the full ttl"
    assert len(fx.origin.peer_calls) == 2


def test_error_ttl_is_configurable() -> None:
    fx = Fixture(error_ttl=5.0)
    fx.origin.peers_error = RuntimeError("down")
    assert fx.get() == []
    fx.origin.peers_error = None
    fx.clock.advance(4.9)
    assert fx.get() == []
    fx.clock.advance(0.1)
    assert fx.get() == [SEEDER]


def test_single_flight(fx: Fixture) -> None:
    fx.origin.peers_hold = True
    waiting = [outcome(fx.peers.get(DIGEST)) for _ in range(3)]
    assert fx.origin.peer_calls == [DIGEST]
    assert waiting == [[], [], []]
    fx.origin.release()
    assert waiting == [[[SEEDER]]] * 3
    assert fx.peers.fetches == 1
    assert fx.get() == [SEEDER]
    assert fx.origin.peer_calls == [DIGEST]
    assert fx.idle()


def test_single_flight_shares_a_failure(fx: Fixture) -> None:
    fx.origin.peers_hold = True
    fx.origin.peers_error = RuntimeError("down")
    waiting = [outcome(fx.peers.get(DIGEST)) for _ in range(2)]
    fx.origin.release()
    assert waiting == [[[]], [[]]]
    assert fx.peers.fetches == fx.peers.failures == 1


def test_a_cancelled_caller_does_not_disturb_the_others(fx: Fixture) -> None:
    fx.origin.peers_hold = True
    first, second = fx.peers.get(DIGEST), fx.peers.get(DIGEST)
    got_first, got_second = outcome(first), outcome(second)
    first.cancel()
    assert isinstance(got_first[0], Failure) and got_first[0].check(CancelledError)
    fx.origin.release()
    assert got_second == [[SEEDER]]
    assert fx.peers.fetches == 1
    assert fx.idle()


def test_a_slow_lookup_answers_nothing_after_the_wait_then_is_cached(fx: Fixture) -> None:
    fx.origin.peers_hold = True
    late = outcome(fx.peers.get(DIGEST))
    fx.clock.advance(1.9)
    assert late == []
    fx.clock.advance(0.1)  # the 2 s wait
    assert late == [[]]
    assert fx.idle()
    fx.origin.release()  # the lookup finishes with nobody waiting
    assert fx.get() == [SEEDER]
    assert fx.origin.peer_calls == [DIGEST]


def test_a_lookup_still_running_is_joined_not_repeated(fx: Fixture) -> None:
    fx.origin.peers_hold = True
    outcome(fx.peers.get(DIGEST))
    fx.clock.advance(2.0)  # the first caller gave up
    again = outcome(fx.peers.get(DIGEST))
    assert fx.origin.peer_calls == [DIGEST]
    fx.origin.release()
    assert again == [[SEEDER]]


def test_bounded_least_recently_used() -> None:
    fx = Fixture(size=2)
    a, b, c = (blob(s)[0] for s in "abc")
    fx.get(a)
    fx.get(b)
    fx.get(a)  # a is now the most recently used
    fx.get(c)  # evicts b
    assert len(fx.peers) == 2
    fx.get(a)
    assert fx.origin.peer_calls == [a, b, c]
    fx.get(b)
    assert fx.origin.peer_calls == [a, b, c, b]


@pytest.mark.parametrize("bad", [{"ttl": 0.0}, {"error_ttl": -1.0}, {"size": 0}, {"wait": 0.0}])
def test_parameters_must_be_positive(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="positive"):
        Fixture(**bad)


def test_a_stale_answer_is_given_at_once_while_one_refresh_runs(fx: Fixture) -> None:
    assert fx.get() == [SEEDER]
    fx.clock.advance(10.0)  # past the ttl
    fx.origin.peers_hold = True
    fx.origin.seeders = [peer(201)]
    assert fx.get() == [SEEDER], "the stale answer, without waiting"
    assert fx.get() == [SEEDER]
    assert fx.origin.peer_calls == [DIGEST, DIGEST], "one refresh for both"
    assert fx.idle(), "a refresh has nobody waiting on a timer"
    fx.origin.release()
    [got] = fx.get()
    assert got.peer_id == peer(201).peer_id, "the refreshed answer"
    assert fx.peers.fetches == 2


def test_too_stale_an_answer_is_waited_for(fx: Fixture) -> None:
    assert fx.get() == [SEEDER]
    fx.origin.peers_hold = True
    fx.clock.advance(19.9)  # ttl + stale (10 s by default) not yet over
    assert fx.get() == [SEEDER]
    fx.clock.advance(0.1)
    waiting = outcome(fx.peers.get(DIGEST))
    assert waiting == [], "older than ttl + stale: a miss"
    assert fx.origin.peer_calls == [DIGEST, DIGEST], "joins the refresh already running"
    fx.origin.release()
    assert waiting == [[SEEDER]]


def test_stale_zero_waits_as_before() -> None:
    fx = Fixture(stale=0.0)
    assert fx.get() == [SEEDER]
    fx.clock.advance(10.0)
    fx.origin.peers_hold = True
    waiting = outcome(fx.peers.get(DIGEST))
    assert waiting == []
    fx.origin.release()
    assert waiting == [[SEEDER]]
    with pytest.raises(ValueError, match="negative"):
        Fixture(stale=-1.0)


def test_a_failed_refresh_answers_nothing_for_the_error_ttl(fx: Fixture) -> None:
    assert fx.get() == [SEEDER]
    fx.clock.advance(10.0)
    fx.origin.peers_error = RuntimeError("down")
    with capturedLogs():
        assert fx.get() == [], "the refresh failed at once: its answer is the newest"
    fx.origin.peers_error = None
    fx.clock.advance(1.0)
    assert fx.get() == [SEEDER]
