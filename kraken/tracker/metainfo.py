"""The tracker's metainfo, asked of the origins and remembered (``MetaInfoCache``)."""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from kraken.core import Digest, MetaInfo
from kraken.singleflight import SingleFlight


class MetaInfoSource(Protocol):
    """What the tracker needs of ``kraken.origin.client.OriginClient``."""

    async def metainfo(self, namespace: str, digest: Digest) -> MetaInfo | None: ...


class MetaInfoCache:
    """Metainfo by (namespace, digest): fresh for ``ttl`` seconds, at most
    ``size`` entries (least recently used evicted). Concurrent misses for one
    blob share one origin fetch; each caller gets its own Deferred, so one
    client going away cancels nobody else. Absent blobs are not cached.
    (``kraken.singleflight.SingleFlight``.)"""

    log = Logger()

    def __init__(self, source: MetaInfoSource, *, clock: IReactorTime, ttl: float, size: int) -> None:
        self._source = source
        self._flight: SingleFlight[tuple[str, Digest], MetaInfo | None] = SingleFlight(
            self._fetch, clock=clock, ttl=ttl, size=size, keep=lambda info: info is not None, unseen=self._unseen
        )

    @property
    def fetches(self) -> int:
        """Fetches sent to the origin so far."""
        return self._flight.fetches

    def get(self, namespace: str, digest: Digest) -> Deferred[MetaInfo | None]:
        return self._flight.get((namespace, digest))

    async def _fetch(self, key: tuple[str, Digest]) -> MetaInfo | None:
        return await self._source.metainfo(*key)

    def _unseen(self, key: tuple[str, Digest], failure: Failure) -> None:
        # Everyone went away; nobody else will see this failure.
        self.log.debug("metainfo fetch failed with no one waiting: {error}", error=failure.getErrorMessage())

    def __len__(self) -> int:
        return len(self._flight)
