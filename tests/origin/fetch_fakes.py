"""Fakes for the fetch-on-miss tests: a scriptable backend and a worker that takes clock time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from zope.interface import implementer

from kraken.backends import BackendUnavailable, BlobInfo, BlobNotFound, IBackend, ListPage

T = TypeVar("T")


@implementer(IBackend)
class FakeBackend:
    """Blobs by name in memory. ``down`` makes every call fail as unavailable;
    ``gate``, when set, holds downloads until it fires; ``lie_size`` makes
    ``stat`` report another size."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.stats = 0
        self.downloads = 0
        self.down = False
        self.gate: Deferred[None] | None = None
        self.lie_size: int | None = None

    async def stat(self, namespace: str, name: str) -> BlobInfo:
        self.stats += 1
        if self.down:
            raise BackendUnavailable("backend down")
        if name not in self.blobs:
            raise BlobNotFound(namespace, name)
        return BlobInfo(len(self.blobs[name]) if self.lie_size is None else self.lie_size)

    async def download(self, namespace: str, name: str, path: str) -> None:
        self.downloads += 1
        if self.gate is not None:
            await self.gate
        if self.down:
            raise BackendUnavailable("backend down")
        if name not in self.blobs:
            raise BlobNotFound(namespace, name)
        _write(path, self.blobs[name])

    async def upload(self, namespace: str, name: str, path: str) -> None:
        raise BackendUnavailable("read-only")

    async def list(self, prefix: str = "", *, continuation: str | None = None, limit: int = 1000) -> ListPage:
        return ListPage(tuple(sorted(n for n in self.blobs if n.startswith(prefix))))


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


class ClockWorker:
    """Runs each job after ``delay`` seconds of the clock (a slow disk, without threads)."""

    def __init__(self, clock: IReactorTime, delay: float) -> None:
        self._clock = clock
        self._delay = delay

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        return deferLater(self._clock, self._delay, f, *args, **kwargs)
