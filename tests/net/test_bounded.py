"""bounded_map: a bound on calls in flight, first failure and cancellation stop everything."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived

from kraken.net.bounded import bounded_map, chunks


class Calls:
    """Calls that wait until the test fires them; a cancel fails them like a
    treq request cancelled mid-flight (not with CancelledError)."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.pending: dict[int, Deferred[int]] = {}
        self.most = 0

    def __call__(self, item: int) -> Deferred[int]:
        self.started.append(item)

        def cancel(d: Deferred[int]) -> None:
            d.errback(Failure(ResponseNeverReceived([Failure(CancelledError())])))

        d: Deferred[int] = Deferred(cancel)
        self.pending[item] = d
        d.addBoth(self._done, item)
        self.most = max(self.most, len(self.pending))
        return d

    def _done(self, result: Any, item: int) -> Any:
        self.pending.pop(item, None)
        return result

    def finish(self, item: int) -> None:
        self.pending[item].callback(item * 10)


def outcome(d: Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def test_chunks() -> None:
    assert list(chunks(list(range(5)), 2)) == [[0, 1], [2, 3], [4]]
    assert list(chunks([], 3)) == []
    with pytest.raises(ValueError):
        list(chunks([1], 0))


def test_at_most_limit_in_flight_and_results_in_order() -> None:
    calls = Calls()
    out = outcome(bounded_map(range(10), 3, calls))
    assert calls.started == [0, 1, 2]
    while calls.pending:
        assert len(calls.pending) <= 3
        calls.finish(max(calls.pending))  # newest first: the results still come back in order
    assert calls.most == 3
    assert out == [[i * 10 for i in range(10)]]


def test_ten_thousand_immediate_calls_neither_recurse_nor_pile_up() -> None:
    out = outcome(bounded_map(range(10_000), 8, lambda i: succeed(i)))
    assert out == [list(range(10_000))]


def test_first_failure_cancels_the_rest_and_starts_no_more() -> None:
    calls = Calls()
    out = outcome(bounded_map(range(100), 4, calls))
    calls.pending[1].errback(Failure(OSError("boom")))
    assert isinstance(out[0], Failure) and out[0].check(OSError)
    assert calls.pending == {}  # 0, 2, 3 cancelled
    assert calls.started == [0, 1, 2, 3]


def test_cancel_cancels_in_flight_starts_nothing_and_leaves_no_unhandled_error() -> None:
    calls = Calls()
    with capturedLogs() as events:
        d = bounded_map(range(10_000), 5, calls)
        out = outcome(d)
        d.cancel()
        del d
        gc.collect()
    assert isinstance(out[0], Failure) and out[0].check(CancelledError)
    assert calls.started == [0, 1, 2, 3, 4]
    assert calls.pending == {}
    assert [e for e in events if e.get("log_failure") is not None or e.get("isError")] == []


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        bounded_map([1], 0, lambda i: succeed(i))
