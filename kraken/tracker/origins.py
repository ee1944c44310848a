"""Which origins seed a blob, asked of the origins themselves and cached.

The tracker hands origins out as seeders of a blob only when they hold it.
It asks the origin (``OriginClient.peers``, ``GET /blobs/<digest>/peers``)
and keeps the answer for ``ttl`` seconds. A failed lookup is logged and
counts as "no origins" for ``error_ttl`` seconds, so announces keep working
(with agents only) while an origin is down, without asking it on every
announce. Concurrent lookups of one digest share one request. An answer
past its time is still given for a while (``stale`` seconds, by default as
long as ``ttl``) while a fresh lookup runs in the background, so announces do
not wait for the origin every ``ttl`` seconds.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from kraken.core import Digest
from kraken.core.peer import PeerInfo

DEFAULT_TTL = 10.0
DEFAULT_ERROR_TTL = 1.0
DEFAULT_SIZE = 10_000
#: How long an announce waits for a lookup before answering without origins.
DEFAULT_WAIT = 2.0


class PeerSource(Protocol):
    """What ``OriginPeers`` needs of ``kraken.origin.client.OriginClient``."""

    async def peers(self, digest: Digest) -> list[PeerInfo]: ...


class OriginPeers:
    """The origins seeding each blob, by digest.

    ``get`` answers from memory while an answer is fresh (``ttl`` seconds
    for a lookup that worked, ``error_ttl`` for one that failed), else asks
    ``source``; at most ``size`` digests are remembered (least recently used
    evicted). Every caller gets its own Deferred, which never fails: a
    failed lookup, or one taking longer than ``wait`` seconds, gives ``[]``
    (the lookup goes on, and its answer is cached for the next caller).
    Cancelling one caller's Deferred affects nobody else.

    An answer up to ``stale`` seconds past its time (``ttl`` by default; 0
    turns this off) is still given at once, while one lookup refreshes it in
    the background; older than that, callers wait for the lookup as for a
    digest never asked about.

    The answers are handed out as origins: ``complete`` and ``origin`` are
    set on them whatever the source said.
    """

    log = Logger()

    def __init__(
        self,
        source: PeerSource,
        *,
        clock: IReactorTime,
        ttl: float = DEFAULT_TTL,
        error_ttl: float = DEFAULT_ERROR_TTL,
        size: int = DEFAULT_SIZE,
        wait: float = DEFAULT_WAIT,
        stale: float | None = None,
    ) -> None:
        if ttl <= 0 or error_ttl <= 0 or size <= 0 or wait <= 0:
            raise ValueError("ttl, error_ttl, size and wait must be positive")
        if stale is not None and stale < 0:
            raise ValueError("stale must not be negative")
        self._source = source
        self._clock = clock
        self._ttl = ttl
        self._error_ttl = error_ttl
        self._size = size
        self._wait = wait
        self._stale = ttl if stale is None else stale
        self._entries: OrderedDict[Digest, tuple[tuple[PeerInfo, ...], float]] = OrderedDict()
        self._waiting: dict[Digest, list[Deferred[list[PeerInfo]]]] = {}
        #: Lookups sent to the source, and how many of them failed.
        self.fetches = 0
        self.failures = 0

    def get(self, digest: Digest) -> Deferred[list[PeerInfo]]:
        hit = self._entries.get(digest)
        if hit is not None:
            peers, expires = hit
            now = self._clock.seconds()
            if now < expires:
                self._entries.move_to_end(digest)
                return succeed(list(peers))
            if now < expires + self._stale:
                # Stale: answer with it, and refresh it in the background. A source that
                # answers at once has refreshed it by the time _refresh returns.
                self._refresh(digest)
                hit = self._entries.get(digest, hit)
                self._entries.move_to_end(digest)
                return succeed(list(hit[0]))
            del self._entries[digest]
        mine: Deferred[list[PeerInfo]] = Deferred(lambda d: self._forget(digest, d))
        mine.addTimeout(self._wait, self._clock)
        mine.addErrback(self._gave_up, digest)
        waiters = self._waiting.get(digest)
        if waiters is not None:
            waiters.append(mine)
            return mine
        self._waiting[digest] = [mine]
        self._fetch(digest)
        return mine

    def _refresh(self, digest: Digest) -> None:
        if digest not in self._waiting:
            self._waiting[digest] = []
            self._fetch(digest)

    def _fetch(self, digest: Digest) -> None:
        self.fetches += 1
        # Last: a source that answers at once calls _done right here.
        Deferred.fromCoroutine(self._source.peers(digest)).addBoth(lambda r: self._done(digest, r))

    def _gave_up(self, failure: Failure, digest: Digest) -> list[PeerInfo] | Failure:
        if failure.check(TimeoutError):
            self.log.debug("origin peers of {digest} are late: answering without", digest=str(digest))
            return []
        return failure  # cancelled by its caller

    def _forget(self, digest: Digest, d: Deferred[list[PeerInfo]]) -> None:
        waiters = self._waiting.get(digest)
        if waiters is not None and d in waiters:
            waiters.remove(d)

    def _done(self, digest: Digest, result: list[PeerInfo] | Failure) -> None:
        waiters = self._waiting.pop(digest, [])
        if isinstance(result, Failure):
            self.failures += 1
            self.log.warn(
                "asking the origin which origins hold {digest} failed: {error}",
                digest=str(digest),
                error=result.getErrorMessage(),
            )
            peers: tuple[PeerInfo, ...] = ()
            ttl = self._error_ttl
        else:
            peers = tuple(attrs.evolve(p, complete=True, origin=True) for p in result)
            ttl = self._ttl
        self._entries[digest] = (peers, self._clock.seconds() + ttl)
        self._entries.move_to_end(digest)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        for d in waiters:
            d.callback(list(peers))

    def __len__(self) -> int:
        return len(self._entries)
