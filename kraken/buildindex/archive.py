"""The tag archive: the build-index's tags kept in storage backends, where
it writes tags back and where it looks for a tag it does not have.

(Not a storage backend itself: ``kraken.backends.IBackend`` is one. The
archive is the build-index's use of them for tags: per namespace, which
backend holds its tags, in which layout, and whether it may be written.)

Built from the ``backends:`` section (the same shape as the origin's,
``kraken.backends.config.BackendConfig``); the first entry whose namespace
regex matches the whole repository name serves that repository. What an
entry can do with tags depends on its backend kind:

- ``fs``, ``s3``, ``hdfs``: read and write. A tag ``repo:tag`` is the file
  ``docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/current/link``
  under the entry's root, holding ``sha256:<hex>`` (docker/distribution's
  layout, the ``docker_tag`` pather), so a bucket or directory written by a
  Docker registry is read as it is, and the other way round. The entry's
  ``name_path`` is ignored here: it describes blobs, and one ``backends``
  list may serve the origin and the build-index alike.
- ``registry``: read only, through ``resolve_tag`` (the upstream's
  ``GET /v2/<repo>/manifests/<tag>``).
- ``http``: holds no tags (its URLs name blobs by digest).

Bandwidth limits of an entry do not apply to tags (a tag file is 71 bytes).
Link files pass through small temporary files in ``scratch``, written and
read in the injected ``Worker``.
"""

from __future__ import annotations

import glob
import os
import re
import uuid
from collections.abc import Sequence
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kraken.backends import BlobNotFound, IBackend
from kraken.backends.config import BUILDERS, BackendConfig
from kraken.core import Digest, DigestError
from kraken.files import remove_quietly
from kraken.workers import Worker

#: Kinds whose tags live in files laid out by the docker_tag pather.
OBJECT_KINDS = frozenset({"fs", "s3", "hdfs"})
TEMP_PREFIX = ".kraken-tag-"
#: A link file longer than this is not a digest.
MAX_LINK = 1024

log = Logger()


def tag_name(repo: str, tag: str) -> str:
    """The backend name of a tag: ``repo:tag`` (what the docker_tag pather takes)."""
    return f"{repo}:{tag}"


@attrs.frozen
class ArchiveEntry:
    """The tags of one ``backends:`` entry, in its storage backend. ``kind`` is the entry's backend kind."""

    kind: str
    namespace: str
    _backend: IBackend
    _worker: Worker
    _scratch: str

    @property
    def readable(self) -> bool:
        return self.kind in OBJECT_KINDS or self.kind == "registry"

    @property
    def writable(self) -> bool:
        return self.kind in OBJECT_KINDS

    async def get(self, repo: str, tag: str) -> Digest | None:
        """The digest the backend holds for ``repo:tag``; None if it has no
        such tag (or holds something that is not a digest, which is logged).
        Other failures raise (``BackendError`` and the like)."""
        if self.kind == "registry":
            try:
                found: Digest = await self._backend.resolve_tag(repo, tag)  # type: ignore[attr-defined]
            except BlobNotFound:
                return None
            return found
        if not self.readable:
            return None
        path = os.path.join(self._scratch, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        try:
            await self._backend.download(repo, tag_name(repo, tag), path)
        except BlobNotFound:
            return None
        try:
            text = await self._worker.run(_read_link, path)
        finally:
            await self._worker.run(remove_quietly, path)
        try:
            return Digest.parse(text)
        except DigestError:
            log.warn(
                "backend tag file of {namespace}:{tag} holds {content!r}, not a digest: ignored",
                namespace=repo,
                tag=tag,
                content=text[:100],
            )
            return None

    async def put(self, repo: str, tag: str, digest: Digest) -> None:
        """Store ``repo:tag`` -> ``digest`` (the link file's text ``sha256:<hex>``)."""
        if not self.writable:
            raise ValueError(f"the {self.kind} backend of namespace {self.namespace!r} does not store tags")
        path = await self._worker.run(_write_link, self._scratch, str(digest))
        try:
            await self._backend.upload(repo, tag_name(repo, tag), path)
        finally:
            await self._worker.run(remove_quietly, path)


class TagArchive:
    """The ordered (namespace regex, archive entry) list: the first entry whose regex matches the whole
    repository name holds its tags."""

    def __init__(self, routes: Sequence[tuple[str, ArchiveEntry]]) -> None:
        self._routes = [(re.compile(pattern), backend) for pattern, backend in routes]

    def __len__(self) -> int:
        return len(self._routes)

    def for_repo(self, repo: str) -> ArchiveEntry | None:
        """The first entry matching all of ``repo``; None if none matches."""
        for pattern, backend in self._routes:
            if pattern.fullmatch(repo):
                return backend
        return None

    def writable(self, repo: str) -> bool:
        backend = self.for_repo(repo)
        return backend is not None and backend.writable

    async def get(self, repo: str, tag: str) -> Digest | None:
        """The backend's digest for ``repo:tag``; None if no backend serves
        ``repo`` or it has no such tag. Backend failures raise."""
        backend = self.for_repo(repo)
        return None if backend is None else await backend.get(repo, tag)


def _tag_entry(entry: BackendConfig) -> tuple[str, Any]:
    """The entry's kind and its settings, with the docker_tag layout for the kinds that store files."""
    kind, settings = entry.kind()
    if kind in OBJECT_KINDS and settings.name_path != "docker_tag":
        settings = attrs.evolve(settings, name_path="docker_tag")
    return kind, settings


def build_tag_archive(
    configs: Sequence[BackendConfig],
    *,
    worker: Worker,
    clock: IReactorTime,
    scratch: str,
    http: HTTPClient | None = None,
) -> TagArchive:
    """The tag archive ``configs`` describe, in order. ``scratch`` is a
    directory for link files in transit (it must exist)."""
    routes = []
    for entry in configs:
        kind, settings = _tag_entry(entry)
        backend = BUILDERS[kind](settings, worker, clock, http)
        routes.append((entry.namespace, ArchiveEntry(kind, entry.namespace, backend, worker, scratch)))
    return TagArchive(routes)


def sweep_scratch(scratch: str) -> int:
    """Remove link files a previous run left in ``scratch`` (blocking: call before the reactor runs)."""
    removed = 0
    for path in glob.glob(os.path.join(glob.escape(scratch), TEMP_PREFIX + "*")):
        remove_quietly(path)
        removed += 1
    return removed


# -- in the worker ------------------------------------------------------------------------------------------------


def _read_link(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read(MAX_LINK + 1)
    if len(data) > MAX_LINK:
        return "<too long>"
    return data.decode("utf-8", "replace").strip()


def _write_link(directory: str, text: str) -> str:
    path = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
    with open(path, "xb") as f:
        f.write(text.encode("ascii"))
    return path
