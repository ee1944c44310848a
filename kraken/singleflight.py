"""One answer in flight per key, remembered for a while: the cache that the tracker's metainfo, its origin
lookups, the origin client's blob locations and the scheduler's download starts share.

``SingleFlight(fetch, clock=..., ttl=...)``: ``get(key)`` answers from memory while the answer is fresh
(``ttl`` seconds; 0 remembers nothing, so only concurrent calls share), else calls ``fetch(key)`` once,
however many callers ask meanwhile. Each caller gets a Deferred of its own: cancelling it (a client that
went away) cancels nobody else, and the fetch goes on, its answer remembered for the next caller.

- ``keep(answer)`` says whether an answer is remembered (absent blobs, say, are not); failures never are,
  unless ``on_error`` turns a failure into an answer (remembered for ``error_ttl`` seconds).
- ``stale``: an answer up to that many seconds past its time is still given at once, while one fetch
  refreshes it in the background.
- At most ``size`` keys are remembered, the least recently used forgotten first.
- ``wait``: a caller still waiting after that many seconds gets ``on_late(key)`` instead (the fetch goes on, and
  its answer is remembered for the next caller).
- ``unseen(key, failure)`` is told of a failure that no caller waited for any more.
- ``abandon``: when the last caller waiting for a fetch cancels, the fetch is cancelled too (work that only a
  client that went away wanted stops), instead of going on for the next caller.
- ``put(key, answer)`` remembers an answer learnt some other way, as if fetched.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(
        self,
        fetch: Callable[[K], Awaitable[V]],
        *,
        clock: IReactorTime,
        ttl: float,
        size: int = 10_000,
        stale: float = 0.0,
        keep: Callable[[V], bool] = lambda answer: True,
        on_error: Callable[[K, Failure], V] | None = None,
        error_ttl: float = 0.0,
        wait: float = 0.0,
        on_late: Callable[[K], V] | None = None,
        unseen: Callable[[K, Failure], None] | None = None,
        abandon: bool = False,
    ) -> None:
        if ttl < 0 or stale < 0 or error_ttl < 0 or size <= 0:
            raise ValueError("ttl, stale and error_ttl must not be negative, size must be positive")
        if wait < 0 or (wait > 0) != (on_late is not None):
            raise ValueError("wait must not be negative, and goes with on_late")
        self._fetch_one = fetch
        self._clock = clock
        self._ttl = ttl
        self._size = size
        self._stale = stale
        self._keep = keep
        self._on_error = on_error
        self._error_ttl = error_ttl
        self._wait = wait
        self._on_late = on_late
        self._unseen = unseen
        self._abandon = abandon
        self._inflight: dict[K, Deferred[Any]] = {}
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._waiting: dict[K, list[Deferred[V]]] = {}
        #: Calls of ``fetch`` so far, and how many of them failed.
        self.fetches = 0
        self.failures = 0

    def get(self, key: K) -> Deferred[V]:
        hit = self._entries.get(key)
        if hit is not None:
            answer, expires = hit
            now = self._clock.seconds()
            if now < expires:
                self._entries.move_to_end(key)
                return succeed(answer)
            if now < expires + self._stale:
                self._refresh(key)  # a fetch that answers at once has refreshed it already
                self._entries.move_to_end(key)
                return succeed(self._entries.get(key, hit)[0])
            del self._entries[key]
        mine: Deferred[V] = Deferred(lambda d: self._forget(key, d))
        if self._wait > 0:
            mine.addTimeout(self._wait, self._clock)
            mine.addErrback(self._late, key)
        waiters = self._waiting.get(key)
        if waiters is not None:
            waiters.append(mine)
            return mine
        self._waiting[key] = [mine]
        self._fetch(key)
        return mine

    def put(self, key: K, answer: V) -> None:
        """Remember ``answer`` for ``key`` (``ttl`` seconds from now), as if it had been fetched."""
        self._remember(key, answer, self._ttl)

    def forget(self, key: K) -> None:
        """Drop what is remembered of ``key`` (a fetch in flight goes on)."""
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    def _refresh(self, key: K) -> None:
        if key not in self._waiting:
            self._waiting[key] = []
            self._fetch(key)

    def _fetch(self, key: K) -> None:
        self.fetches += 1
        fetching: Deferred[Any] = Deferred.fromCoroutine(_awaited(self._fetch_one(key)))
        self._inflight[key] = fetching
        fetching.addBoth(self._done, key)  # last: a fetch that answered at once is done right here

    def _forget(self, key: K, d: Deferred[V]) -> None:
        waiters = self._waiting.get(key)
        if waiters is not None and d in waiters:
            waiters.remove(d)
            if not waiters and self._abandon:
                fetching = self._inflight.get(key)
                if fetching is not None:
                    fetching.cancel()

    def _late(self, failure: Failure, key: K) -> V | Failure:
        if failure.check(TimeoutError) and self._on_late is not None:
            return self._on_late(key)
        return failure  # cancelled by its caller

    def _done(self, result: V | Failure, key: K) -> None:
        self._inflight.pop(key, None)
        waiters = self._waiting.pop(key, [])
        ttl = self._ttl
        if isinstance(result, Failure):
            self.failures += 1
            if self._on_error is None:
                for d in waiters:
                    d.errback(result)
                if not waiters and self._unseen is not None:
                    self._unseen(key, result)
                return
            result, ttl = self._on_error(key, result), self._error_ttl
        elif not self._keep(result):
            ttl = 0.0
        self._remember(key, result, ttl)
        for d in waiters:
            d.callback(result)

    def _remember(self, key: K, answer: V, ttl: float) -> None:
        if ttl <= 0:
            return
        self._entries[key] = (answer, self._clock.seconds() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


async def _awaited(work: Awaitable[V]) -> V:
    return await work
