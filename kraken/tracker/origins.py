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

from typing import Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from kraken.core import Digest
from kraken.core.peer import PeerInfo
from kraken.singleflight import SingleFlight

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
    digest never asked about. (``kraken.singleflight.SingleFlight``.)

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
        self._flight: SingleFlight[Digest, tuple[PeerInfo, ...]] = SingleFlight(
            self._fetch,
            clock=clock,
            ttl=ttl,
            size=size,
            stale=ttl if stale is None else stale,
            on_error=self._failed,
            error_ttl=error_ttl,
            wait=wait,
            on_late=self._late,
        )

    @property
    def fetches(self) -> int:
        """Lookups sent to the source."""
        return self._flight.fetches

    @property
    def failures(self) -> int:
        """Lookups that failed."""
        return self._flight.failures

    def get(self, digest: Digest) -> Deferred[list[PeerInfo]]:
        return self._flight.get(digest).addCallback(list)

    async def _fetch(self, digest: Digest) -> tuple[PeerInfo, ...]:
        return tuple(attrs.evolve(p, complete=True, origin=True) for p in await self._source.peers(digest))

    def _late(self, digest: Digest) -> tuple[PeerInfo, ...]:
        self.log.debug("origin peers of {digest} are late: answering without", digest=str(digest))
        return ()

    def _failed(self, digest: Digest, failure: Failure) -> tuple[PeerInfo, ...]:
        self.log.warn(
            "asking the origin which origins hold {digest} failed: {error}",
            digest=str(digest),
            error=failure.getErrorMessage(),
        )
        return ()

    def __len__(self) -> int:
        return len(self._flight)
