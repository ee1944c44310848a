"""A blob pushed to the origin is written back to its backend: OriginHTTP
through StubTreq, the write-back queue over SQLite (inline pool) and the
filesystem backend, all on the harness's Clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from origin_harness import Origin
from results import result_of
from writeback_fakes import InlineReactor, inline_pool

from kraken.backends import FSBackend, Router, ShardedDockerBlobPather
from kraken.core import Digest
from kraken.origin.writeback import WriteBackQueue, WriteBackStats

NS = "library/ubuntu"
DATA = b"a layer for the registry " * 5


def push(origin: Origin, data: bytes, ns: str = NS) -> int:
    digest = Digest.from_bytes(data)
    url = f"/namespace/{ns}/blobs/{digest}/uploads"
    code, headers, body = origin.request("POST", url)
    if code == 409:
        return code
    assert code == 200, body
    uid = headers.getRawHeaders(b"location")[0].decode()
    range_ = {b"Content-Range": [f"0-{len(data)}".encode()]}
    assert origin.request("PATCH", f"{url}/{uid}", data=data, headers=range_)[0] == 204
    code, _, body = origin.request("PUT", f"{url}/{uid}")
    return code


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    return tmp_path / "registry"


@pytest.fixture
def queue(origin: Origin, tmp_path: Path, registry: Path) -> Iterator[WriteBackQueue]:
    fs = FSBackend(str(registry), ShardedDockerBlobPather(), worker=origin.worker)
    q = WriteBackQueue(
        inline_pool(str(tmp_path / "writeback.db"), InlineReactor()),
        router=Router([("library/.*", fs)]),
        blob_path=origin.store.blob_path,
        worker=origin.worker,
        clock=origin.clock,
    )
    q.startService()
    origin.serve(advertise="origin.test:15002", writeback=q)
    yield q
    result_of(q.stopService())


class Recorder:
    """A write-back queue that records what it is given (``(namespace, digest)``), or fails with ``error``."""

    def __init__(self, calls: list[tuple[str, Digest]], error: Exception | None = None) -> None:
        self.calls = calls
        self.error = error

    async def add(self, namespace: str, digest: Digest, delay: float = 0.0) -> None:
        if self.error is not None:
            raise self.error
        self.calls.append((namespace, digest))

    def stats(self) -> WriteBackStats:
        return WriteBackStats()


def blob_file(registry: Path, digest: Digest) -> Path:
    return registry / "docker/registry/v2/blobs/sha256" / digest.hex[:2] / digest.hex / "data"


def test_a_pushed_blob_lands_in_the_backend_at_the_distribution_path(
    origin: Origin, queue: WriteBackQueue, registry: Path
) -> None:
    assert push(origin, DATA) == 201
    digest = Digest.from_bytes(DATA)
    assert blob_file(registry, digest).read_bytes() == DATA
    assert not queue.pending(digest)
    assert queue.stats().uploaded == 1


def test_the_backend_being_down_does_not_fail_the_push(origin: Origin, queue: WriteBackQueue, registry: Path) -> None:
    registry.write_bytes(b"")  # a file where the backend's root should be: it cannot store anything
    assert push(origin, DATA) == 201
    digest = Digest.from_bytes(DATA)
    assert queue.pending(digest) and queue.stats().failures == 1
    registry.unlink()
    origin.clock.advance(1.0)
    assert blob_file(registry, digest).read_bytes() == DATA
    assert not queue.pending(digest)


def test_a_namespace_without_backend_queues_nothing_lasting(origin: Origin, queue: WriteBackQueue) -> None:
    assert push(origin, DATA, ns="scratch/tmp") == 201
    assert queue.stats().dropped == 1 and not queue.pending(Digest.from_bytes(DATA))


def test_every_commit_and_every_already_exists_makes_sure_the_blob_is_queued(origin: Origin, tmp_path: Path) -> None:
    calls: list[tuple[str, Digest]] = []
    origin.serve(advertise="o:1", writeback=Recorder(calls))
    digest = Digest.from_bytes(DATA)
    # Two uploads of the same blob started before either commits: both commits answer 201, both make sure.
    url = f"/namespace/{NS}/blobs/{digest}/uploads"
    uids = [origin.request("POST", url)[1].getRawHeaders(b"location")[0].decode() for _ in range(2)]
    range_ = {b"Content-Range": [f"0-{len(DATA)}".encode()]}
    for uid in uids:
        assert origin.request("PATCH", f"{url}/{uid}", data=DATA, headers=range_)[0] == 204
    assert [origin.request("PUT", f"{url}/{uid}")[0] for uid in uids] == [201, 201]
    assert calls == [(NS, digest), (NS, digest)]
    # A later upload hears "already exists" (409), and the blob is queued again in case an earlier
    # queueing failed (the queue ignores a blob it already holds).
    assert origin.request("POST", url)[0] == 409
    assert calls == [(NS, digest)] * 3


def test_a_failing_hook_fails_the_commit(origin: Origin) -> None:
    origin.serve(advertise="o:1", writeback=Recorder([], OSError("disk full")))
    assert push(origin, DATA) == 500
