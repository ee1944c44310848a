"""Failover: moving a call from a location that fails to the next one, and rounds of it with backoff.

The one home of "try the next member": the origin cluster client uses it per blob today, and a client of
replicated trackers or build-indexes plugs in the same way (its ``locations`` the members for a key, best first,
from a ``Ring`` filtered by ``HealthFilter``).

- ``first_answer(locations, call, ...)``: ``call`` on each location in turn until one answers. A failure that
  ``fails_over`` accepts moves on (and is told to ``on_fail``); any other failure ends the search at once.
- ``Failover``: rounds of ``first_answer`` over ``locations(key)``. This is the passive side of health: a
  location that failed makes the client ``forget`` what it remembered of the key's locations, so the next
  call asks again (the ring may be leaving that location out by then). When a whole round failed and one
  failure was ``transient`` (a location unreachable, or a gateway's 429/502/504), the round is repeated after
  the ``RetryPolicy``'s backoff (``kraken.net.retry.with_retries``, on the injected clock); when every
  location answered 500 or 503 (its own backend is down), asking again now would not help: the error is
  raised at once.

By default a network error, a 429 or any 5xx fails over (``fails_over``); an answer below 500 ends the search
(a 404 from one location of a blob is the answer of all of them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kraken.net.client import HTTPStatusError
from kraken.net.retry import NETWORK_ERRORS, RetryPolicy, with_retries

K = TypeVar("K", bound=Hashable)
L = TypeVar("L")
T = TypeVar("T")


def fails_over(error: BaseException) -> bool:
    """Whether a call to one location that failed so should go to the next: the network, a 429 or any 5xx."""
    if isinstance(error, HTTPStatusError):
        return error.code >= 500 or error.code == 429
    return isinstance(error, NETWORK_ERRORS)


def transient(error: BaseException) -> bool:
    """A failure that another try soon may not meet: the network, or a gateway's 429/502/504."""
    if isinstance(error, HTTPStatusError):
        return error.code in (429, 502, 504)
    return isinstance(error, NETWORK_ERRORS)


async def first_answer(
    locations: Sequence[L],
    call: Callable[[L], Awaitable[T]],
    *,
    fails_over: Callable[[Exception], bool] = fails_over,
    on_fail: Callable[[L, Exception, bool], None],
) -> T:
    """``call`` on the first of ``locations`` that answers. A failure that
    ``fails_over`` accepts is told to ``on_fail(location, error, last)`` and
    moves on; if every location failed so, the last failure is raised. Any
    other failure (and ``CancelledError``) is raised at once."""
    error: Exception | None = None
    for i, location in enumerate(locations):
        try:
            return await call(location)
        except CancelledError:
            raise
        except Exception as e:
            if not fails_over(e):
                raise
            error = e
            on_fail(location, e, i + 1 == len(locations))
    if error is None:
        raise ValueError("no location to try")
    raise error


class Failover(Generic[K]):
    """Calls on a key's locations, moving on and repeating rounds (see the module docstring).

    ``locations(key)``: the key's locations, best first (a failure of this
    lookup that ``fails_over`` accepts counts as a failed, transient round).
    ``forget(key)``: drop what is remembered of them. ``kind`` names what the
    locations are, for the log lines ("origin").
    """

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        policy: RetryPolicy,
        locations: Callable[[K], Awaitable[Sequence[str]]],
        forget: Callable[[K], None],
        kind: str,
        fails_over: Callable[[Exception], bool] = fails_over,
        transient: Callable[[Exception], bool] = transient,
    ) -> None:
        self._clock = clock
        self._policy = policy
        self._locations = locations
        self._forget = forget
        self._kind = kind
        self._fails_over = fails_over
        self._transient = transient
        #: Calls that went on to the next location, and rounds that found no working one.
        self.failovers = 0
        self.failed_rounds = 0

    async def call(self, what: str, key: K, call: Callable[[str], Awaitable[T]], **fields: object) -> T:
        """``call(location)`` on the key's first location that answers; ``fields`` go into the log lines."""
        worth_again = False  # a location unreachable or restarting: worth another round
        ended: list[Exception] = []  # the failure that ended the last round

        def failed_at(location: str, error: Exception, last: bool) -> None:
            nonlocal worth_again
            worth_again = worth_again or self._transient(error)
            # Ask for the locations again next time: the ring may be leaving this one out by then.
            self._forget(key)
            if not last:
                self.failovers += 1
                self.log.warn(
                    "{what} on {location} failed ({error}); trying the next location",
                    what=what,
                    location=location,
                    error=str(error),
                    **fields,
                )

        async def round_() -> T:
            nonlocal worth_again
            worth_again = False
            found: Sequence[str] | None = None
            try:
                found = await self._locations(key)
                return await first_answer(found, call, fails_over=self._fails_over, on_fail=failed_at)
            except CancelledError:
                raise
            except Exception as e:
                if not self._fails_over(e):
                    raise
                worth_again = worth_again or found is None  # the lookup failed: no member answered it
                self.failed_rounds += 1
                self._forget(key)  # ask again: the ring may have moved
                ended[:] = [e]
                raise

        def again(error: Exception, tries: int, delay: float) -> None:
            self.log.warn(
                "{what}: no {kind} answered ({error}); trying again in {delay:.2f}s",
                what=what,
                kind=self._kind,
                error=str(error),
                delay=delay,
                **fields,
            )

        return await with_retries(
            self._clock,
            self._policy,
            what,
            round_,
            retryable=lambda e: worth_again and bool(ended) and e is ended[0],
            on_retry=again,
        )
