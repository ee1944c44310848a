"""Failover without I/O: moving along a key's locations, rounds with backoff on the clock, what is forgotten."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from kraken.cluster.failover import Failover, fails_over, first_answer, transient
from kraken.net import HTTPStatusError, RetryPolicy


def status(code: int) -> HTTPStatusError:
    return HTTPStatusError("GET", "http://x", code)


def outcome(coro: Any) -> Any:
    out: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(out.append)
    return out[0] if out else None


class Members:
    """Locations for a key, and what each location does when called: an error to raise or an answer."""

    def __init__(self, behaviour: dict[str, Any], locations: Sequence[str] = ("a", "b", "c")) -> None:
        self.behaviour = behaviour
        self.found: list[Any] = [tuple(locations)]
        self.calls: list[str] = []
        self.lookups = 0
        self.forgotten = 0

    async def locations(self, key: str) -> Sequence[str]:
        self.lookups += 1
        found = self.found[0] if len(self.found) == 1 else self.found.pop(0)
        if isinstance(found, Exception):
            raise found
        return list(found)

    def forget(self, key: str) -> None:
        self.forgotten += 1

    async def call(self, location: str) -> str:
        self.calls.append(location)
        what = self.behaviour.get(location, f"from {location}")
        if isinstance(what, Exception):
            raise what
        return str(what)


def failover(members: Members, clock: Clock, retries: int = 2) -> Failover[str]:
    return Failover(
        clock=clock,
        policy=RetryPolicy(attempts=retries + 1, backoff=1, max_backoff=5),
        locations=members.locations,
        forget=members.forget,
        kind="origin",
    )


def test_what_fails_over_and_what_is_transient() -> None:
    assert all(fails_over(status(c)) for c in (429, 500, 502, 503, 504)) and fails_over(ConnectionRefusedError())
    assert not any(fails_over(status(c)) for c in (400, 404, 409)) and not fails_over(ValueError())
    assert all(transient(status(c)) for c in (429, 502, 504)) and transient(ConnectionRefusedError())
    assert not any(transient(status(c)) for c in (500, 503))


def test_first_answer_moves_on_and_tells_each_failure() -> None:
    members = Members({"a": status(503), "b": ConnectionRefusedError()})
    told: list[tuple[str, bool]] = []
    answer = outcome(first_answer(["a", "b", "c"], members.call, on_fail=lambda loc, e, last: told.append((loc, last))))
    assert answer == "from c" and told == [("a", False), ("b", False)]
    members.behaviour["c"] = status(500)
    failed = outcome(first_answer(["a", "c"], members.call, on_fail=lambda loc, e, last: told.append((loc, last))))
    assert failed.value.code == 500 and told[-1] == ("c", True)
    members.behaviour["a"] = status(404)  # an answer: the search ends
    assert outcome(first_answer(["a", "b"], members.call, on_fail=lambda *a: None)).value.code == 404
    assert outcome(first_answer([], members.call, on_fail=lambda *a: None)).check(ValueError)


def test_a_call_goes_to_the_next_location_and_the_locations_are_forgotten() -> None:
    clock, members = Clock(), Members({"a": status(502)})
    f = failover(members, clock)
    with capturedLogs() as events:
        assert outcome(f.call("stat d", "d", members.call, digest="d")) == "from b"
    assert members.calls == ["a", "b"] and f.failovers == 1 and f.failed_rounds == 0 and members.forgotten == 1
    (event,) = events
    assert "trying the next location" in event["log_format"]
    assert (event["what"], event["location"], event["digest"]) == ("stat d", "a", "d")


def test_a_round_with_an_unreachable_location_is_repeated_after_the_backoff() -> None:
    clock, members = Clock(), Members({"a": status(503), "b": ConnectionRefusedError(), "c": status(500)})
    f = failover(members, clock)
    with capturedLogs() as events:
        d = Deferred.fromCoroutine(f.call("get d", "d", members.call))
        assert f.failed_rounds == 1 and members.lookups == 1
        members.behaviour.clear()
        clock.advance(1)
    assert d.result == "from a" and members.lookups == 2 and f.failovers == 2
    assert events[-1]["log_format"] == "{what}: no {kind} answered ({error}); trying again in {delay:.2f}s"
    assert (events[-1]["kind"], events[-1]["delay"]) == ("origin", 1)


def test_rounds_end_after_the_retries_and_at_once_when_every_location_answered_500_or_503() -> None:
    clock, members = Clock(), Members({loc: ConnectionRefusedError() for loc in "abc"})
    f = failover(members, clock, retries=2)
    d = Deferred.fromCoroutine(f.call("get d", "d", members.call))
    clock.advance(1)
    clock.advance(2)
    assert isinstance(d.result.value, ConnectionRefusedError) and f.failed_rounds == 3
    d.addErrback(lambda _: None)
    members.behaviour = {loc: status(503) for loc in "abc"}
    assert outcome(f.call("get d", "d", members.call)).value.code == 503 and f.failed_rounds == 4
    assert not clock.getDelayedCalls()


def test_a_failed_lookup_is_a_transient_round_and_other_errors_end_the_call() -> None:
    clock, members = Clock(), Members({})
    members.found = [status(502), ("b",)]
    f = failover(members, clock)
    d = Deferred.fromCoroutine(f.call("get d", "d", members.call))
    assert f.failed_rounds == 1
    clock.advance(1)
    assert d.result == "from b"
    members.found = [ValueError("bug")]
    assert outcome(f.call("get d", "d", members.call)).check(ValueError) and f.failed_rounds == 1
    members.found, members.behaviour = [("a", "b")], {"a": status(404)}
    assert outcome(f.call("get d", "d", members.call)).value.code == 404 and members.calls[-1] == "a"
