"""Running many calls with a bound on how many are in flight.

``bounded_map(items, limit, call)`` starts ``call(item)`` for at most
``limit`` items at once, and the next item only when one finishes, so
10,000 items never become 10,000 Deferreds (nor requests) at once. The first
failure cancels the calls in flight, starts no more and is raised;
cancelling the returned Deferred does the same and raises ``CancelledError``.
A call's own result after that (often not a ``CancelledError``: a treq
request cancelled mid-flight fails with ``ResponseNeverReceived``) is
dropped, never left unhandled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure

A = TypeVar("A")
R = TypeVar("R")


def chunks(items: list[A], size: int) -> Iterator[list[A]]:
    """``items`` in consecutive lists of at most ``size``."""
    if size < 1:
        raise ValueError("a chunk holds at least one item")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def bounded_map(items: Iterable[A], limit: int, call: Callable[[A], Awaitable[R]]) -> Deferred[list[R]]:
    """``[await call(item) for item in items]`` with at most ``limit`` calls
    in flight; results in the order of ``items``. See the module docstring."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return _Bounded(list(items), limit, call).start()


class _Bounded:
    def __init__(self, items: list[Any], limit: int, call: Callable[[Any], Awaitable[Any]]) -> None:
        self._items = items
        self._limit = limit
        self._call = call
        self._results: list[Any] = [None] * len(items)
        self._next = 0
        self._running: dict[int, Deferred[Any]] = {}
        self._over = False
        self._filling = False
        self._again = False
        self._done: Deferred[list[Any]] = Deferred(self._cancel)

    def start(self) -> Deferred[list[Any]]:
        self._fill()
        return self._done

    def _fill(self) -> None:
        # Calls that finish at once would recurse here; loop instead.
        if self._filling:
            self._again = True
            return
        self._filling = True
        try:
            self._again = True
            while self._again:
                self._again = False
                while not self._over and len(self._running) < self._limit and self._next < len(self._items):
                    i = self._next
                    self._next += 1
                    d: Deferred[Any] = ensureDeferred(cast(Coroutine[Any, Any, Any], self._call(self._items[i])))
                    self._running[i] = d
                    d.addCallbacks(self._ok, self._failed, callbackArgs=(i,), errbackArgs=(i,))
                if not self._over and not self._running and self._next >= len(self._items):
                    self._over = True
                    self._done.callback(self._results)
        finally:
            self._filling = False

    def _ok(self, result: Any, i: int) -> None:
        self._running.pop(i, None)
        self._results[i] = result
        if not self._over:
            self._fill()

    def _failed(self, failure: Failure, i: int) -> None:
        self._running.pop(i, None)
        if self._over:
            return None  # cancelled by us: dropped
        self._stop()
        self._done.errback(failure)
        return None

    def _stop(self) -> None:
        self._over = True
        running, self._running = list(self._running.values()), {}
        for d in running:
            d.cancel()

    def _cancel(self, _: Deferred[list[Any]]) -> None:
        # Deferred.cancel errbacks _done with CancelledError after this.
        self._stop()
