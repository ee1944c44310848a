"""The storage backend interface, its errors, and per-backend bandwidth limits.

A backend is durable storage behind the origins and the build-index: blobs
(and tags) are uploaded to it after they are committed locally, and fetched
from it on a miss. Every backend offers the same four ``async`` operations,
as Kraken's ``backend.Client``: ``stat``, ``download`` to a local file,
``upload`` from a local file and a paginated ``list``.

``namespace`` is the repository a blob came through (``library/ubuntu``).
The router uses it to choose the backend; most backends then ignore it.
``name`` is what the backend's name pather turns into a storage path: a
digest for blobs, ``repo:tag`` for tags (see ``kraken.backends.names``).

Errors: every failure a caller can act on is a ``BackendError``.
``BlobNotFound`` means the backend answered and has no such blob (do not
retry); ``BackendUnavailable`` means it could not answer (network error,
5xx, unreachable, a disk error): retry later. ``InvalidName`` is a name the
backend's layout cannot hold. Problems with the caller's own local file (a
missing source, a full local disk) are raised as the ``OSError`` they are.
"""

from __future__ import annotations

import os

import attrs
from zope.interface import Interface, implementer

from kraken.throttle import TokenBucket, Unlimited
from kraken.workers import Worker

# A page of names holds at most this many unless the caller asks otherwise (S3's own maximum).
DEFAULT_LIST_LIMIT = 1000


class BackendError(Exception):
    """Something went wrong in or on the way to a storage backend."""


class BlobNotFound(BackendError):
    """The backend has no blob of this name."""

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f"blob {name!r} not found (namespace {namespace!r})")
        self.namespace = namespace
        self.name = name


class BackendUnavailable(BackendError):
    """The backend could not be reached or failed to answer (network, 5xx, I/O): worth retrying later."""


class InvalidName(BackendError, ValueError):
    """A name (or list prefix) that the backend's layout cannot hold."""


@attrs.frozen
class BlobInfo:
    size: int


@attrs.frozen
class ListPage:
    """One page of names, sorted. ``continuation`` is None on the last page;
    otherwise pass it back to ``list`` for the next page."""

    names: tuple[str, ...]
    continuation: str | None = None


class IBackend(Interface):
    """Durable blob storage. Every method is ``async``."""

    async def stat(namespace: str, name: str) -> BlobInfo:
        """The blob's size. Raises ``BlobNotFound`` or ``BackendUnavailable``."""

    async def download(namespace: str, name: str, path: str) -> None:
        """Write the blob to the local file ``path``, atomically: the bytes go
        to a temporary file beside it, which is renamed over ``path`` only once
        complete. On any failure ``path`` is left as it was and the temporary
        file is removed."""

    async def upload(namespace: str, name: str, path: str) -> None:
        """Store the local file ``path`` as ``name``, replacing any blob of
        that name. Readers never see a partial blob."""

    async def list(prefix: str = "", *, continuation: str | None = None, limit: int = DEFAULT_LIST_LIMIT) -> ListPage:
        """Names that start with ``prefix``, sorted, at most ``limit`` of them,
        after the page that returned ``continuation``."""


@implementer(IBackend)
class ThrottledBackend:
    """Caps the bytes a backend moves each way with token buckets (Kraken's
    ``ThrottledClient``). An upload reserves its file's size from ``egress``
    before it starts, a download reserves the blob's size (from ``stat``) from
    ``ingress``. Listing and stat are not metered."""

    def __init__(
        self,
        backend: IBackend,
        *,
        ingress: TokenBucket | Unlimited,
        egress: TokenBucket | Unlimited,
        worker: Worker,
    ) -> None:
        self.backend = backend
        self.ingress = ingress
        self.egress = egress
        self._worker = worker
        # The configured limits; ``share`` divides them.
        self._rates = {
            bucket: (bucket.rate, bucket.burst) for bucket in (ingress, egress) if isinstance(bucket, TokenBucket)
        }

    def share(self, parts: int) -> None:
        """Give this process 1/``parts`` of the configured limits: the origins of a cluster share one
        backend's bandwidth, so each takes its share as the ring grows and shrinks (as Kraken does)."""
        parts = max(1, parts)
        for bucket, (rate, burst) in self._rates.items():
            bucket.set_rate(rate / parts, burst / parts)

    async def stat(self, namespace: str, name: str) -> BlobInfo:
        return await self.backend.stat(namespace, name)

    async def download(self, namespace: str, name: str, path: str) -> None:
        info = await self.backend.stat(namespace, name)
        await self.ingress.reserve(info.size)
        await self.backend.download(namespace, name, path)

    async def upload(self, namespace: str, name: str, path: str) -> None:
        size = await self._worker.run(os.path.getsize, path)
        await self.egress.reserve(size)
        await self.backend.upload(namespace, name, path)

    async def list(
        self, prefix: str = "", *, continuation: str | None = None, limit: int = DEFAULT_LIST_LIMIT
    ) -> ListPage:
        return await self.backend.list(prefix, continuation=continuation, limit=limit)

    def close(self) -> None:
        """Stop the buckets' timers; waiting transfers fail with ``CancelledError``."""
        self.ingress.close()
        self.egress.close()
