"""The agent's registry source (``IRegistrySource``): every byte through the
P2P scheduler.

The agent serves the read-only registry API (``RegistryAPI(read_only=True)``)
over ``AgentSource``. Blobs and manifests alike are fetched with
``scheduler.download(repo, digest)``, which returns the path of the blob in
the local cache once it is there (downloading it from peers and origins
first); tags are resolved by the build-index. Nothing is ever written
through it: the API refuses pushes before they reach the source.

Listings (tags, catalog, referrers) are not served by an agent: it holds no
index of repositories, only the blobs this host pulled. Tags and catalog
answer 405 UNSUPPORTED; referrers answer 404 UNSUPPORTED, the status with
which the OCI spec tells clients to fall back to the referrers tag schema.
"""

from __future__ import annotations

import os
from typing import Protocol

from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.static import File
from zope.interface import implementer

from kraken.core import Digest
from kraken.net import HTTPStatusError
from kraken.net.retry import NETWORK_ERRORS
from kraken.p2p.scheduler import BlobNotFound, DownloadFailed
from kraken.registry.errors import ManifestInvalid, Unknown, Unsupported
from kraken.registry.manifests import parse_manifest
from kraken.registry.source import IRegistrySource, ManifestRecord, Page
from kraken.workers import Worker

LISTINGS_UNSUPPORTED = "the Kraken agent does not list {what}: ask the Kraken proxy"


class Downloader(Protocol):
    """What the source needs of ``kraken.p2p.scheduler.Scheduler``."""

    async def download(self, namespace: str, digest: Digest) -> str: ...


class TagSource(Protocol):
    """What the source needs of ``kraken.buildindex.client.BuildIndexClient``."""

    async def get_tag(self, repo: str, tag: str) -> Digest | None: ...


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

    def __init__(self, scheduler: Downloader, tags: TagSource, *, worker: Worker, max_manifest_size: int) -> None:
        self._scheduler = scheduler
        self._tags = tags
        self._worker = worker
        self._max_manifest_size = max_manifest_size

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
        path = await self._path(repo, digest)
        return None if path is None else await self._worker.run(_size_or_none, path)

    async def blob_resource(self, repo: str, digest: Digest) -> IResource | None:
        path = await self._path(repo, digest)
        return None if path is None else File(path, defaultType="application/octet-stream")

    async def read_blob(self, repo: str, digest: Digest, limit: int) -> bytes | None:
        path = await self._path(repo, digest)
        if path is None:
            return None
        data = await self._worker.run(_read_at_most, path, limit + 1)
        return None if data is None or len(data) > limit else data

    async def stat_blobs(self, repo: str, digests: list[Digest]) -> dict[Digest, int | None]:
        raise Unsupported("the Kraken agent is read-only: push to the Kraken proxy")

    async def commit_blob(self, repo: str, digest: Digest, path: str, size: int) -> None:
        raise Unsupported("the Kraken agent is read-only: push to the Kraken proxy")

    # -- manifests and tags --

    async def get_manifest(self, repo: str, digest: Digest) -> ManifestRecord | None:
        body = await self.read_blob(repo, digest, self._max_manifest_size)
        if body is None:
            return None
        try:
            parsed = parse_manifest(body, None)
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
        return await self._tags.get_tag(repo, tag)

    # -- listings: not on an agent --

    async def list_tags(self, repo: str, n: int | None, last: str | None) -> Page | None:
        raise Unsupported(LISTINGS_UNSUPPORTED.format(what="tags"))

    async def list_repositories(self, n: int | None, last: str | None) -> Page:
        raise Unsupported(LISTINGS_UNSUPPORTED.format(what="repositories"))

    async def referrers(self, repo: str, subject: Digest) -> list[ManifestRecord]:
        raise Unsupported(LISTINGS_UNSUPPORTED.format(what="referrers"), status=404)


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
