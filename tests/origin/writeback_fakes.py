"""Test doubles for the write-back tests: an adbapi pool over a real SQLite
file whose queries run at once, a Clock that runs ``callFromThread`` at
once, and a backend that keeps blobs in memory and fails on demand."""

from __future__ import annotations

from typing import Any

from inline_pool import InlineReactor, inline
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from zope.interface import implementer

from kraken.backends import BackendUnavailable, BlobInfo, BlobNotFound, IBackend, ListPage
from kraken.origin.writeback import open_pool


def inline_pool(path: str, reactor: InlineReactor) -> adbapi.ConnectionPool:
    """The production pool with an inline thread pool: every query has run
    by the time ``runInteraction`` returns."""
    return inline(open_pool(path, reactor))


@implementer(IBackend)
class FakeBackend:
    """Blobs by name in a dict. ``fail_uploads`` uploads fail with
    ``error``; with ``hold`` set, uploads wait on a Deferred the test fires."""

    def __init__(self, clock: Any = None) -> None:
        self.blobs: dict[str, bytes] = {}
        self.calls: list[tuple[str, str, str]] = []  # (operation, namespace, name)
        self.upload_times: list[float] = []
        self.fail_uploads = 0
        self.error: Exception = BackendUnavailable("backend down")
        self.hold = False
        self.held: list[Deferred[None]] = []
        self._clock = clock

    async def stat(self, namespace: str, name: str) -> BlobInfo:
        self.calls.append(("stat", namespace, name))
        if name not in self.blobs:
            raise BlobNotFound(namespace, name)
        return BlobInfo(len(self.blobs[name]))

    async def download(self, namespace: str, name: str, path: str) -> None:
        raise NotImplementedError

    async def upload(self, namespace: str, name: str, path: str) -> None:
        self.calls.append(("upload", namespace, name))
        if self._clock is not None:
            self.upload_times.append(self._clock.seconds())
        if self.hold:
            d: Deferred[None] = Deferred()
            self.held.append(d)
            await d
        if self.fail_uploads:
            self.fail_uploads -= 1
            raise self.error
        self.blobs[name] = _read(path)

    async def list(self, prefix: str = "", *, continuation: str | None = None, limit: int = 1000) -> ListPage:
        return ListPage(tuple(sorted(n for n in self.blobs if n.startswith(prefix))))

    def uploads(self) -> list[str]:
        return [name for op, _, name in self.calls if op == "upload"]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
