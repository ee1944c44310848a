"""The agent's registry source (``IRegistrySource``): every byte through the
P2P scheduler.

The agent serves the read-only registry API (``RegistryAPI(read_only=True)``)
over ``AgentSource``. Blobs and manifests alike are fetched with
``scheduler.download(repo, digest)``, which returns the path of the blob in
the local cache once it is there (downloading it from peers and origins
first); tags are resolved by the build-index. Nothing is ever written
through it: the API refuses pushes before they reach the source.

As a containerd mirror (docs/operations.md section 16) the source never
strands a pull: with ``sizes`` (this host's cache, then the tracker's
metainfo) a blob HEAD is answered without downloading the blob, and an
unknown blob is a fast None (404); with ``answer_timeout`` every question to
the tracker or the build-index (a tag, a blob's size, a manifest's bytes) is
bounded, and one that is not answered in time, or fails, is 503 UNKNOWN so
that containerd tries its next host (a status the agent chose, never one
relayed from upstream: no 401 reaches the client).

Listings (tags, catalog, referrers) are the build-index's, as on the proxy:
the agent holds no index of repositories, so it asks the build-index (its
``BuildIndexes`` client) and the shared ``kraken.registry.http_listings``
handlers page, link and filter them exactly as the proxy's do. Those
questions are bounded by ``answer_timeout`` like a tag's: late or failing,
they are 503 UNKNOWN.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.static import File
from zope.interface import implementer

from kraken.agent.cleanup import Pins
from kraken.core import Digest, MetaInfo
from kraken.net import HTTPStatusError
from kraken.net.retry import NETWORK_ERRORS
from kraken.p2p.scheduler import BlobNotFound, DownloadFailed
from kraken.registry.errors import ManifestInvalid, Unknown, Unsupported
from kraken.registry.manifests import parse_manifest
from kraken.registry.source import IRegistrySource, ManifestRecord, Page
from kraken.workers import Worker

FALL_BACK = "the client should try its next registry host"

T = TypeVar("T")

#: ``sizes(namespace, digest)``: the blob's size without downloading it, or None if no origin has it.
BlobSizes = Callable[[str, Digest], Awaitable[int | None]]


class Downloader(Protocol):
    """What the source needs of ``kraken.p2p.scheduler.Scheduler``."""

    async def download(self, namespace: str, digest: Digest) -> str: ...


class TagSource(Protocol):
    """What the source needs of ``kraken.buildindex.client.BuildIndexes``: tags, and the listings."""

    async def get_tag(self, repo: str, tag: str) -> Digest | None: ...

    async def list_tags(self, repo: str, n: int | None, last: str | None) -> Page | None: ...

    async def list_repositories(self, n: int | None, last: str | None) -> Page: ...

    async def referrers(self, repo: str, subject: Digest) -> list[ManifestRecord]: ...


MetaInfoSource = Callable[[str, Digest], Awaitable[MetaInfo | None]]


@attrs.frozen
class Mirror:
    """What makes the source a containerd mirror that never strands a pull: blob ``sizes`` without a
    download, and every question to the tracker or build-index answered within ``answer_timeout`` seconds
    of ``clock``."""

    sizes: BlobSizes
    clock: IReactorTime
    answer_timeout: float


class Unavailable(Exception):
    """The scheduler could not get the blob (``DownloadFailed``)."""


async def fetch(scheduler: Downloader, namespace: str, digest: Digest) -> str | None:
    """The cached path of the blob, downloading it if needed; None when no
    origin has it. ``DownloadFailed``, and the tracker failing or out of
    reach (while the metainfo is fetched), become ``Unavailable``."""
    try:
        return await scheduler.download(namespace, digest)
    except BlobNotFound:
        return None
    except DownloadFailed as e:
        raise Unavailable(str(e) or "download failed") from e
    except (HTTPStatusError, *NETWORK_ERRORS) as e:
        raise Unavailable(f"the tracker failed: {e}") from e


@implementer(IRegistrySource)
class AgentSource:
    log = Logger()

    def __init__(
        self,
        scheduler: Downloader,
        tags: TagSource,
        *,
        worker: Worker,
        max_manifest_size: int,
        mirror: Mirror | None = None,
        pins: Pins | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._pins = pins if pins is not None else Pins()  # readers: the cache cleanup leaves their blobs alone
        self._tags = tags
        self._worker = worker
        self._max_manifest_size = max_manifest_size
        self._sizes = None if mirror is None else mirror.sizes
        self._mirror = mirror

    async def _bounded(self, what: str, repo: str, work: Callable[[], Awaitable[T]]) -> T:
        """``work()`` within ``answer_timeout``; late, or failing upstream (tracker, build-index), it is
        503 UNKNOWN, a status containerd answers by trying its next host."""
        d: Deferred[T] = Deferred.fromCoroutine(_awaited(work))
        if self._mirror is not None:
            d.addTimeout(self._mirror.answer_timeout, self._mirror.clock)
        try:
            return await d
        except defer.TimeoutError:
            reason = f"no answer within {self._mirror.answer_timeout if self._mirror else '?'}s"
        except (HTTPStatusError, *NETWORK_ERRORS) as e:
            reason = f"upstream failed: {e}"
        self.log.warn(
            "{what} in {namespace}: {reason}; answering 503 so that the client tries its next registry host",
            what=what,
            namespace=repo,
            reason=reason,
        )
        raise Unknown(f"the agent could not get {what}: {reason}; {FALL_BACK}", status=503)

    async def _path(self, repo: str, digest: Digest) -> str | None:
        try:
            return await fetch(self._scheduler, repo, digest)
        except Unavailable as e:
            self.log.warn(
                "download of {digest} in {namespace} failed: {error}", digest=str(digest), namespace=repo, error=str(e)
            )
            raise Unknown(
                f"the agent could not download this blob: {e}", detail={"digest": str(digest)}, status=502
            ) from None

    # -- blobs --

    async def stat_blob(self, repo: str, digest: Digest) -> int | None:
        sizes = self._sizes
        if sizes is not None:  # from metadata: the blob is not downloaded
            return await self._bounded(f"the size of {digest}", repo, lambda: sizes(repo, digest))
        path = await self._path(repo, digest)
        return None if path is None else await self._worker.run(_size_or_none, path)

    async def blob_resource(self, repo: str, digest: Digest) -> IResource | None:
        # With sizes, a blob no origin has is a fast None, and a silent tracker a bounded 503, before the
        # download (which may take long for a large layer, and is not bounded) starts.
        if self._sizes is not None and await self.stat_blob(repo, digest) is None:
            return None
        path = await self._path(repo, digest)
        return None if path is None else self._pins.resource(digest, File(path, defaultType="application/octet-stream"))

    async def read_blob(self, repo: str, digest: Digest, limit: int) -> bytes | None:
        return await self._bounded(f"blob {digest}", repo, lambda: self._read_blob(repo, digest, limit))

    async def _read_blob(self, repo: str, digest: Digest, limit: int) -> bytes | None:
        path = await self._path(repo, digest)
        if path is None:
            return None
        release = self._pins.pin(digest)
        try:
            data = await self._worker.run(_read_at_most, path, limit + 1)
        finally:
            release()
        return None if data is None or len(data) > limit else data

    async def stat_blobs(self, repo: str, digests: list[Digest]) -> dict[Digest, int | None]:
        raise Unsupported("the Kraken agent is read-only: push to the Kraken proxy")

    async def commit_blob(self, repo: str, digest: Digest, path: str, size: int, upload: str = "") -> None:
        raise Unsupported("the Kraken agent is read-only: push to the Kraken proxy")

    # -- manifests and tags --

    async def get_manifest(self, repo: str, digest: Digest) -> ManifestRecord | None:
        body = await self.read_blob(repo, digest, self._max_manifest_size)
        if body is None:
            return None
        try:
            parsed = parse_manifest(body, None, digest.algorithm)
        except ManifestInvalid as e:
            self.log.info(
                "blob {digest} in {namespace} is not a manifest: {error}",
                digest=str(digest),
                namespace=repo,
                error=e.message,
            )
            return None
        return parsed.record()

    async def put_manifest(self, repo: str, record: ManifestRecord, body: bytes, tag: str | None) -> None:
        raise Unsupported("the Kraken agent is read-only: push to the Kraken proxy")

    async def resolve_tag(self, repo: str, tag: str) -> Digest | None:
        return await self._bounded(f"tag {tag}", repo, lambda: self._tags.get_tag(repo, tag))

    # -- listings: the build-index's, bounded like a tag --

    async def list_tags(self, repo: str, n: int | None, last: str | None) -> Page | None:
        return await self._bounded("the tags", repo, lambda: self._tags.list_tags(repo, n, last))

    async def list_repositories(self, n: int | None, last: str | None) -> Page:
        return await self._bounded("the repositories", "_catalog", lambda: self._tags.list_repositories(n, last))

    async def referrers(self, repo: str, subject: Digest) -> list[ManifestRecord]:
        return await self._bounded(f"the referrers of {subject}", repo, lambda: self._tags.referrers(repo, subject))


async def _awaited(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


class LocalOrTracker:
    """``BlobSizes`` for the agent: the size of a blob in this host's cache, else its length in the
    metainfo the tracker has from the origins (None: no origin has it). Nothing is downloaded."""

    def __init__(self, cached: Callable[[Digest], Awaitable[int | None]], metainfo: MetaInfoSource) -> None:
        self._cached = cached
        self._metainfo = metainfo

    async def __call__(self, namespace: str, digest: Digest) -> int | None:
        size = await self._cached(digest)
        if size is not None:
            return size
        info = await self._metainfo(namespace, digest)
        return None if info is None else info.length


def _size_or_none(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _read_at_most(path: str, n: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except FileNotFoundError:
        return None
