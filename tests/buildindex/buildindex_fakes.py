"""Test doubles for the build-index tests: a synchronous adbapi pool over a
real SQLite file, a fake origin, manifest builders and a StubTreq driver."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Coroutine
from typing import Any

import treq
from inline_pool import InlineReactor, inline
from results import result_of
from stream_fakes import Collector, FakeResponse, produce
from treq.testing import StubTreq
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred

from kraken.backends import BackendUnavailable, BlobNotFound
from kraken.buildindex.archive import ArchiveEntry, TagArchive
from kraken.buildindex.duplicate import Duplicator
from kraken.buildindex.http import BuildIndexHTTP
from kraken.buildindex.index import TagIndex
from kraken.buildindex.outbox import NODE
from kraken.buildindex.tags import TagStore, open_pool
from kraken.buildindex.writeback import TagWriteBack
from kraken.core import Digest
from kraken.net import HTTPStatusError
from kraken.registry.manifests import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from kraken.workers import InlineWorker

BASE = "http://build-index.test"


def inline_pool(path: str, reactor: InlineReactor) -> adbapi.ConnectionPool:
    """The production pool (``open_pool``) with its thread pool replaced by an
    inline one, so every query has run by the time ``runInteraction`` returns."""
    return inline(open_pool(path, reactor))


def open_store(path: str, reactor: InlineReactor, max_page: int = 1000) -> TagStore:
    store = TagStore(inline_pool(path, reactor), clock=reactor, max_page=max_page)
    store.startService()
    return store


class FakeOrigin:
    """What ``TagIndex`` needs of a ``ClusterClient``: blobs by digest
    (namespaces ignored), and a log of the calls."""

    def __init__(self) -> None:
        self.blobs: dict[Digest, bytes] = {}
        self.calls: list[tuple[str, str, Digest]] = []
        self.batches: list[list[Digest]] = []
        self.error: Exception | None = None
        self.uploads: list[Digest] = []  # blobs stored by upload_from, in order

    def add(self, data: bytes) -> Digest:
        d = Digest.from_bytes(data)
        self.blobs[d] = data
        return d

    async def stat(self, namespace: str, digest: Digest) -> int | None:
        self.calls.append(("stat", namespace, digest))
        if self.error is not None:
            raise self.error
        data = self.blobs.get(digest)
        return None if data is None else len(data)

    async def stat_many(self, namespace: str, digests: list[Digest], *, concurrency: int) -> dict[Digest, int | None]:
        self.batches.append(list(digests))
        return {d: await self.stat(namespace, d) for d in digests}

    async def read_small(self, namespace: str, digest: Digest, limit: int) -> bytes | None:
        self.calls.append(("read", namespace, digest))
        if self.error is not None:
            raise self.error
        data = self.blobs.get(digest)
        if data is not None and len(data) > limit:
            from kraken.net import ResponseTooLarge

            raise ResponseTooLarge(f"over {limit}")
        return data

    async def get(self, namespace: str, digest: Digest) -> FakeResponse:
        """The blob as a response whose body is delivered at once (404 when absent)."""
        self.calls.append(("get", namespace, digest))
        data = self.blobs.get(digest)
        return FakeResponse(data or b"", code=404 if data is None else 200, auto=True)

    async def upload_from(self, namespace: str, digest: Digest, body: Any, *, rate: float | None = None) -> None:
        """Take what ``body()`` produces and store it, unless it does not hash to ``digest`` (400, as
        an origin checks an upload)."""
        if self.error is not None:
            raise self.error
        consumer = Collector()
        await produce(await body(), consumer)
        if Digest.from_bytes(consumer.data) != digest:
            raise HTTPStatusError("PUT", f"upload {digest}", 400, b"digest mismatch")
        self.blobs[digest] = consumer.data
        self.uploads.append(digest)


def blob(seed: str) -> tuple[Digest, bytes]:
    data = f"blob {seed}".encode()
    return Digest.from_bytes(data), data


def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def image_manifest(config: bytes, layers: list[bytes], *, oci: bool = False, subject: bytes | None = None) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
        "config": descriptor(DOCKER_CONFIG, config),
        "layers": [descriptor(DOCKER_LAYER, layer) for layer in layers],
    }
    if subject is not None:
        doc["subject"] = descriptor(OCI_MANIFEST, subject)
    return json.dumps(doc).encode()


def index_manifest(children: list[bytes]) -> bytes:
    entries = [descriptor(json.loads(c).get("mediaType", OCI_MANIFEST), c) for c in children]
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    return json.dumps(doc).encode()


class MemoryBackend:
    """An in-memory ``IBackend``: names to bytes, with a log of calls.
    ``failures`` makes that many next calls raise ``BackendUnavailable``;
    ``hold`` makes uploads wait for a Deferred the test fires."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.calls: list[tuple[str, str]] = []
        self.failures = 0
        self.hold: Deferred[None] | None = None

    def _maybe_fail(self, op: str, name: str) -> None:
        self.calls.append((op, name))
        if self.failures > 0:
            self.failures -= 1
            raise BackendUnavailable(f"{op} {name}: storage is down")

    async def stat(self, namespace: str, name: str) -> Any:
        self._maybe_fail("stat", name)
        if name not in self.blobs:
            raise BlobNotFound(namespace, name)
        return len(self.blobs[name])

    async def download(self, namespace: str, name: str, path: str) -> None:
        self._maybe_fail("download", name)
        if name not in self.blobs:
            raise BlobNotFound(namespace, name)
        _write_file(path, self.blobs[name])

    async def upload(self, namespace: str, name: str, path: str) -> None:
        self._maybe_fail("upload", name)
        if self.hold is not None:
            await self.hold
        self.blobs[name] = _read_file(path)

    async def list(self, prefix: str = "", *, continuation: str | None = None, limit: int = 1000) -> Any:
        raise NotImplementedError


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class FakeRegistryBackend:
    """What a tag backend needs of ``RegistryBackend``: ``resolve_tag``."""

    def __init__(self) -> None:
        self.tags: dict[tuple[str, str], Digest] = {}
        self.error: Exception | None = None

    async def resolve_tag(self, repo: str, tag: str) -> Digest:
        if self.error is not None:
            raise self.error
        try:
            return self.tags[(repo, tag)]
        except KeyError:
            raise BlobNotFound(repo, f"{repo}:{tag}") from None

    async def upload(self, namespace: str, name: str, path: str) -> None:
        raise AssertionError("read-only")


def tag_archive(scratch: str, *routes: tuple[str, str, Any]) -> TagArchive:
    """A tag archive over fake backends: routes of (namespace regex, kind, backend)."""
    worker = InlineWorker()
    return TagArchive([(ns, ArchiveEntry(kind, ns, backend, worker, scratch)) for ns, kind, backend in routes])


class App:
    """A BuildIndexHTTP over a synchronous TagStore and a fake origin, behind
    StubTreq; with an ``archive``, a write-back loop (started) too, and with
    ``neighbours`` a duplicator."""

    def __init__(
        self,
        path: str,
        max_page: int = 1000,
        max_manifest_size: int = 4 << 20,
        max_references: int = 1000,
        *,
        archive: TagArchive | None = None,
        neighbours: list[tuple[str, Any]] | None = None,
        reactor: InlineReactor | None = None,
        stagger: float = 1200.0,
    ) -> None:
        self.reactor = InlineReactor() if reactor is None else reactor
        self.origin = FakeOrigin()
        self.tags = open_store(path, self.reactor, max_page=max_page)
        origin: Any = self.origin
        self.writeback: TagWriteBack | None = None
        if archive is not None:
            self.writeback = TagWriteBack(self.tags, archive, clock=self.reactor, backoff_min=1.0, backoff_max=8.0)
            self.writeback.startService()
        self.duplicator: Duplicator | None = None
        if neighbours is not None:
            self.duplicator = Duplicator(
                neighbours, self.tags.outbox(NODE), clock=self.reactor, stagger=stagger, attempts=3, backoff=10.0,
                backoff_max=40.0,
            )  # fmt: skip
            self.duplicator.startService()
        self.index = TagIndex(
            self.tags,
            origin,
            max_manifest_size=max_manifest_size,
            max_page=max_page,
            max_references=max_references,
            archive=archive,
            writeback=self.writeback,
            duplicator=self.duplicator,
        )
        self.http = BuildIndexHTTP(self.index)
        self.stub = StubTreq(self.http.resource())

    def run(self, work: Deferred[Any] | Coroutine[Any, Any, Any]) -> Any:
        return result_of(work, self.pump)

    def pump(self) -> None:
        self.reactor.advance(0)
        self.stub.flush()

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
        async def go() -> tuple[int, bytes]:
            response = await self.stub.request(method, BASE + path, **kwargs)
            return response.code, await treq.content(response)

        return self.run(go())

    def json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        code, body = self.request(method, path, **kwargs)
        return code, json.loads(body)

    def close(self) -> None:
        if self.duplicator is not None:
            self.duplicator.stopService()
        if self.writeback is not None:
            self.writeback.stopService()
        self.tags.stopService()
