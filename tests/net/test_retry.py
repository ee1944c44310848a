"""The one retry policy: which failures are retried, the delays on the clock, and the hooks its users give."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from kraken.net import HTTPClientConfig, HTTPStatusError, RetryPolicy, with_retries
from kraken.net.retry import is_retryable


class Flaky:
    """Fails with each of ``errors`` in turn, then answers "ok"; counts its calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def run(clock: Clock, policy: RetryPolicy, attempt: Any, **kwargs: Any) -> tuple[Deferred[Any], list[Any]]:
    out: list[Any] = []
    d = Deferred.fromCoroutine(with_retries(clock, policy, "get x", attempt, **kwargs))
    d.addBoth(out.append)
    return d, out


def test_delays_grow_to_the_cap_and_come_from_the_config() -> None:
    assert RetryPolicy(attempts=5, backoff=1, max_backoff=3).delays() == [1, 2, 3, 3]
    assert RetryPolicy(attempts=1).delays() == []
    policy = RetryPolicy.from_config(HTTPClientConfig(retries=2, backoff=0.5, max_backoff=0.75))
    assert (policy.attempts, policy.delays()) == (3, [0.5, 0.75])


def test_retryable_failures() -> None:
    assert all(is_retryable(HTTPStatusError("GET", "u", code)) for code in (429, 502, 503, 504))
    assert not any(is_retryable(HTTPStatusError("GET", "u", code)) for code in (400, 404, 500))
    assert is_retryable(ConnectionRefusedError()) and not is_retryable(ValueError())


def test_retries_on_the_clock_and_logs_each_retry() -> None:
    clock = Clock()
    attempt = Flaky(HTTPStatusError("GET", "u", 503), ConnectionRefusedError())
    with capturedLogs() as events:
        _, out = run(clock, RetryPolicy(attempts=3, backoff=1), attempt)
        assert attempt.calls == 1
        clock.advance(0.9)
        assert attempt.calls == 1
        clock.advance(0.1)
        assert attempt.calls == 2
        clock.advance(2)
    assert out == ["ok"] and attempt.calls == 3
    assert [e["log_format"] for e in events] == ["{what} failed ({error}); retrying in {delay:.2f}s"] * 2
    assert [e["delay"] for e in events] == [1, 2]


def test_other_errors_and_the_last_one_are_raised_at_once() -> None:
    clock = Clock()
    _, out = run(clock, RetryPolicy(), Flaky(HTTPStatusError("GET", "u", 404)))
    assert out[0].check(HTTPStatusError) and out[0].value.code == 404
    attempt = Flaky(*[HTTPStatusError("GET", "u", 502)] * 3)
    _, out = run(clock, RetryPolicy(attempts=2, backoff=1), attempt)
    clock.advance(1)
    assert out[0].check(HTTPStatusError) and attempt.calls == 2
    assert not clock.getDelayedCalls()


def test_cancelled_is_never_retried_even_if_retryable_says_so() -> None:
    clock = Clock()
    _, out = run(clock, RetryPolicy(), Flaky(CancelledError()), retryable=lambda e: True)
    assert out[0].check(CancelledError) and not clock.getDelayedCalls()


def test_a_user_gives_its_own_retryable_and_log_line() -> None:
    clock = Clock()
    told: list[tuple[str, int, float]] = []
    attempt = Flaky(ValueError("a"), ValueError("b"))
    with capturedLogs() as events:
        _, out = run(
            clock,
            RetryPolicy(attempts=3, backoff=10, max_backoff=15),
            attempt,
            retryable=lambda e: isinstance(e, ValueError),
            on_retry=lambda e, tries, delay: told.append((str(e), tries, delay)),
        )
        clock.advance(10)
        clock.advance(15)
    assert out == ["ok"] and told == [("a", 1, 10), ("b", 2, 15)] and events == []


def test_cancelling_during_a_wait_stops_the_retries() -> None:
    clock = Clock()
    attempt = Flaky(ConnectionRefusedError())
    d, out = run(clock, RetryPolicy(backoff=1), attempt)
    d.cancel()
    assert out[0].check(CancelledError) and attempt.calls == 1
    assert not clock.getDelayedCalls()


def test_one_delay_of_the_schedule() -> None:
    policy = RetryPolicy(backoff=1.0, factor=1.3, max_backoff=5.0)
    assert [round(policy.delay(i), 3) for i in range(8)] == [1.0, 1.3, 1.69, 2.197, 2.856, 3.713, 4.827, 5.0]
