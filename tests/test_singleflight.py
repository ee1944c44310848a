"""SingleFlight: one fetch per key in flight, answers remembered for a while, callers independent."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from kraken.singleflight import SingleFlight


class Source:
    """A fetch whose answers the test gives, one pending Deferred per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Deferred[Any]]] = []

    def __call__(self, key: str) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((key, d))
        return d

    def answer(self, value: Any, i: int = -1) -> None:
        self.calls[i][1].callback(value)


def outcome(d: Deferred[Any]) -> Any:
    """What ``d`` fired with (consumed: call once per Deferred, after ``d.called``)."""
    assert d.called
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]


def test_concurrent_callers_share_one_fetch_and_the_answer_is_remembered_for_ttl() -> None:
    clock, source = Clock(), Source()
    cache: SingleFlight[str, int] = SingleFlight(source, clock=clock, ttl=10)
    a, b = cache.get("k"), cache.get("k")
    assert len(source.calls) == 1 and not a.called
    source.answer(7)
    assert outcome(a) == outcome(b) == 7
    clock.advance(9.9)
    assert outcome(cache.get("k")) == 7 and cache.fetches == 1
    clock.advance(0.2)
    cache.get("k")
    assert cache.fetches == 2


def test_a_caller_that_cancels_cancels_nobody_else_and_the_answer_is_kept() -> None:
    clock, source = Clock(), Source()
    cache: SingleFlight[str, int] = SingleFlight(source, clock=clock, ttl=10)
    a, b = cache.get("k"), cache.get("k")
    a.cancel()
    assert outcome(a).check(CancelledError)
    source.answer(3)
    assert outcome(b) == 3
    c = cache.get("j")
    c.cancel()
    assert outcome(c).check(CancelledError)  # everyone goes: the fetch runs on, and its answer is remembered
    source.answer(5)
    assert outcome(cache.get("j")) == 5 and cache.fetches == 2


def test_failures_reach_the_waiters_and_are_not_remembered() -> None:
    clock, source = Clock(), Source()
    cache: SingleFlight[str, int] = SingleFlight(source, clock=clock, ttl=10)
    a = cache.get("k")
    source.calls[0][1].errback(ValueError("no"))
    assert outcome(a).check(ValueError)
    cache.get("k")
    assert cache.fetches == 2 and cache.failures == 1
    gone = cache.get("x")
    gone.cancel()
    assert outcome(gone).check(CancelledError)
    source.calls[-1][1].errback(ValueError("nobody hears this"))  # and nothing is left unhandled
    assert cache.failures == 2


def test_on_error_makes_a_failure_an_answer_remembered_for_error_ttl() -> None:
    clock, source = Clock(), Source()
    cache: SingleFlight[str, list[str]] = SingleFlight(
        source, clock=clock, ttl=10, on_error=lambda key, f: [], error_ttl=2
    )
    a = cache.get("k")
    source.calls[0][1].errback(ValueError("down"))
    assert outcome(a) == []
    clock.advance(1)
    assert outcome(cache.get("k")) == [] and cache.fetches == 1
    clock.advance(1.5)
    cache.get("k")
    assert cache.fetches == 2


def test_keep_decides_what_is_remembered_and_ttl_zero_only_shares() -> None:
    clock, source = Clock(), Source()
    cache: SingleFlight[str, int | None] = SingleFlight(source, clock=clock, ttl=10, keep=lambda v: v is not None)
    cache.get("k")
    source.answer(None)
    cache.get("k")
    assert cache.fetches == 2
    sharing: SingleFlight[str, int] = SingleFlight(source, clock=clock, ttl=0)
    a, b = sharing.get("s"), sharing.get("s")
    source.answer(1)
    assert outcome(a) == outcome(b) == 1 and len(sharing) == 0
    sharing.get("s")
    assert sharing.fetches == 2


def test_a_stale_answer_is_given_at_once_while_one_fetch_refreshes_it() -> None:
    clock, source = Clock(), Source()
    cache: SingleFlight[str, int] = SingleFlight(source, clock=clock, ttl=10, stale=5)
    cache.get("k")
    source.answer(1)
    clock.advance(12)
    assert outcome(cache.get("k")) == 1 and outcome(cache.get("k")) == 1
    assert cache.fetches == 2  # one refresh for both
    source.answer(2)
    assert outcome(cache.get("k")) == 2
    clock.advance(16)  # past ttl and stale: wait for a fetch again
    waiting = cache.get("k")
    assert not waiting.called
    source.answer(3)
    assert outcome(waiting) == 3


def test_at_most_size_keys_least_recently_used_forgotten_first() -> None:
    clock, source = Clock(), Source()
    cache: SingleFlight[str, str] = SingleFlight(source, clock=clock, ttl=10, size=2)
    for key in "abc":
        cache.get(key)
        source.answer(key)
    assert len(cache) == 2
    cache.get("a")
    assert cache.fetches == 4
    cache.forget("c")
    cache.get("c")
    assert cache.fetches == 5


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SingleFlight(Source(), clock=Clock(), ttl=-1)
    with pytest.raises(ValueError):
        SingleFlight(Source(), clock=Clock(), ttl=1, size=0)


def test_a_caller_waiting_past_wait_gets_on_late_and_the_fetch_goes_on() -> None:
    clock, source = Clock(), Source()
    cache: SingleFlight[str, list[str]] = SingleFlight(
        source, clock=clock, ttl=10, wait=2, on_late=lambda key: [f"late {key}"]
    )
    a = cache.get("k")
    clock.advance(1)
    b = cache.get("k")
    clock.advance(1)
    assert outcome(a) == ["late k"] and not b.called
    source.answer(["x"])
    assert outcome(b) == ["x"] and outcome(cache.get("k")) == ["x"] and cache.fetches == 1
    c = cache.get("j")
    c.cancel()  # cancelled by its caller: not late
    assert outcome(c).check(CancelledError)
    source.answer(["y"])
    assert not clock.getDelayedCalls()


def test_unseen_hears_of_a_failure_nobody_waited_for() -> None:
    clock, source = Clock(), Source()
    heard: list[tuple[str, str]] = []
    cache: SingleFlight[str, int] = SingleFlight(
        source, clock=clock, ttl=10, unseen=lambda key, f: heard.append((key, f.getErrorMessage()))
    )
    a = cache.get("k")
    source.calls[0][1].errback(ValueError("seen"))
    assert outcome(a).check(ValueError) and heard == []
    gone = cache.get("k")
    gone.cancel()
    outcome(gone)
    source.calls[1][1].errback(ValueError("unseen"))
    assert heard == [("k", "unseen")]


def test_put_remembers_an_answer_for_ttl() -> None:
    clock, source = Clock(), Source()
    cache: SingleFlight[str, int] = SingleFlight(source, clock=clock, ttl=10, size=1)
    cache.put("k", 4)
    assert outcome(cache.get("k")) == 4 and cache.fetches == 0
    cache.put("j", 5)  # size 1: k is forgotten
    clock.advance(10)
    cache.get("j")
    cache.get("k")
    assert cache.fetches == 2


def test_wait_goes_with_on_late() -> None:
    with pytest.raises(ValueError):
        SingleFlight(Source(), clock=Clock(), ttl=1, wait=1)
    with pytest.raises(ValueError):
        SingleFlight(Source(), clock=Clock(), ttl=1, on_late=lambda key: None)


def test_abandon_cancels_a_fetch_once_its_last_caller_went_away() -> None:
    clock, source = Clock(), Source()
    cache: SingleFlight[str, int] = SingleFlight(source, clock=clock, ttl=10, abandon=True)
    a, b = cache.get("k"), cache.get("k")
    a.cancel()
    assert outcome(a).check(CancelledError) and not source.calls[0][1].called  # b still waits
    b.cancel()
    assert source.calls[0][1].called and outcome(b).check(CancelledError)  # the fetch was cancelled
    c = cache.get("k")  # a new fetch, not the abandoned one
    assert len(source.calls) == 2
    source.answer(2)
    assert outcome(c) == 2 and outcome(cache.get("k")) == 2
