"""An in-memory ``IRegistrySource`` for the registry API tests.

Blobs are kept as bytes and also written to ``blob_dir`` so ``blob_resource``
can return a ``static.File``, which answers ``Range`` like the real stores.
Every call is recorded in ``calls`` for assertions.
"""

from __future__ import annotations

import hashlib
import os

import attrs
from twisted.web import static
from twisted.web.resource import IResource
from zope.interface import implementer

from kraken.core import Digest
from kraken.registry.source import IRegistrySource, ManifestRecord, Page


@attrs.define
class _Repo:
    manifests: dict[Digest, ManifestRecord] = attrs.Factory(dict)
    tags: dict[str, Digest] = attrs.Factory(dict)


def _page(items: list[str], n: int | None, last: str | None) -> Page:
    items = sorted(items)
    if last is not None:
        items = [i for i in items if i > last]
    if n is None:
        return Page(tuple(items), False)
    return Page(tuple(items[:n]), len(items) > n)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@implementer(IRegistrySource)
class MemorySource:
    def __init__(self, blob_dir: str) -> None:
        self.blob_dir = blob_dir
        os.makedirs(blob_dir, exist_ok=True)
        self.blobs: dict[Digest, bytes] = {}
        self.repos: dict[str, _Repo] = {}
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    # -- test set-up helpers ------------------------------------------------

    def add_blob(self, data: bytes) -> Digest:
        digest = Digest.from_bytes(data)
        self.blobs[digest] = data
        with open(os.path.join(self.blob_dir, digest.hex), "wb") as f:
            f.write(data)
        return digest

    def add_repo(self, name: str) -> None:
        self.repos.setdefault(name, _Repo())

    # -- IRegistrySource -----------------------------------------------------

    async def stat_blob(self, repo: str, digest: Digest) -> int | None:
        self.calls.append(("stat_blob", (digest,)))
        data = self.blobs.get(digest)
        return None if data is None else len(data)

    async def stat_blobs(self, repo: str, digests: list[Digest]) -> dict[Digest, int | None]:
        self.calls.append(("stat_blobs", tuple(digests)))
        return {d: None if d not in self.blobs else len(self.blobs[d]) for d in digests}

    async def blob_resource(self, repo: str, digest: Digest) -> IResource | None:
        self.calls.append(("blob_resource", (digest,)))
        if digest not in self.blobs:
            return None
        return static.File(os.path.join(self.blob_dir, digest.hex), defaultType="application/octet-stream")

    async def commit_blob(self, repo: str, digest: Digest, path: str, size: int, upload: str = "") -> None:
        self.calls.append(("commit_blob", (repo, digest, path, size)))
        data = _read(path)
        # The API layer promises a verified file; hold it to that.
        assert len(data) == size, (len(data), size)
        assert hashlib.sha256(data).hexdigest() == digest.hex
        self.add_blob(data)
        self.add_repo(repo)

    async def read_blob(self, repo: str, digest: Digest, limit: int) -> bytes | None:
        self.calls.append(("read_blob", (digest, limit)))
        data = self.blobs.get(digest)
        if data is None or len(data) > limit:
            return None
        return data

    async def get_manifest(self, repo: str, digest: Digest) -> ManifestRecord | None:
        self.calls.append(("get_manifest", (repo, digest)))
        r = self.repos.get(repo)
        return None if r is None else r.manifests.get(digest)

    async def put_manifest(self, repo: str, record: ManifestRecord, body: bytes, tag: str | None) -> None:
        self.calls.append(("put_manifest", (repo, record, body, tag)))
        assert Digest.from_bytes(body) == record.digest
        self.add_blob(body)
        r = self.repos.setdefault(repo, _Repo())
        r.manifests[record.digest] = record
        if tag is not None:
            r.tags[tag] = record.digest

    async def resolve_tag(self, repo: str, tag: str) -> Digest | None:
        self.calls.append(("resolve_tag", (repo, tag)))
        r = self.repos.get(repo)
        return None if r is None else r.tags.get(tag)

    async def list_tags(self, repo: str, n: int | None, last: str | None) -> Page | None:
        self.calls.append(("list_tags", (repo, n, last)))
        r = self.repos.get(repo)
        return None if r is None else _page(list(r.tags), n, last)

    async def list_repositories(self, n: int | None, last: str | None) -> Page:
        self.calls.append(("list_repositories", (n, last)))
        return _page(list(self.repos), n, last)

    async def referrers(self, repo: str, subject: Digest) -> list[ManifestRecord]:
        self.calls.append(("referrers", (repo, subject)))
        r = self.repos.get(repo)
        if r is None:
            return []
        return sorted((m for m in r.manifests.values() if m.subject == subject), key=lambda m: str(m.digest))
