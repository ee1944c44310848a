"""Serving a blob while the origin fetches it: ``BlobFetcher.growing`` over a backend that tells its progress, and
the ``Kraken-Stream`` GET of ``OriginHTTP``, on the harness's store and Clock."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
import treq
from fetch_fakes import FakeBackend
from origin_harness import PEER, Origin
from results import result_of
from twisted.internet.defer import Deferred
from twisted.web.client import ResponseFailed
from twisted.web.http import PotentialDataLoss

from kraken.backends import Router
from kraken.core import Digest
from kraken.origin.cluster import _FirstOf
from kraken.origin.fetch import BlobFetcher
from kraken.origin.http import OriginHTTP
from kraken.store.growing import GrowingFile

NS = "library/ubuntu"
DATA = b"a layer that arrives in two halves " * 8
DIGEST = Digest.from_bytes(DATA)
HALF = len(DATA) // 2


class GrowingBackend(FakeBackend):
    """Writes a blob in two halves, the second once ``rest`` fires, telling ``growing`` each."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        super().__init__()
        self.blobs.update(blobs)
        self.rest: Deferred[None] = Deferred()
        self.hashes = False  # hash as it writes (as stream_to_file does)

    async def download_growing(self, namespace: str, name: str, path: str, growing: GrowingFile | None) -> None:
        data = self.blobs[name]
        fd = os.open(path, os.O_RDWR | os.O_TRUNC)
        try:
            if growing is not None:
                growing.attach(os.dup(fd))
            os.pwrite(fd, data[:HALF], 0)
            if growing is not None:
                growing.advance(HALF)
            await self.rest
            os.pwrite(fd, data[HALF:], HALF)
            if growing is not None:
                growing.advance(len(data))
                growing.sha256 = hashlib.sha256(data) if self.hashes else None
        finally:
            os.close(fd)


@pytest.fixture
def backend() -> GrowingBackend:
    return GrowingBackend({DIGEST.hex: DATA})


@pytest.fixture
def fetcher(origin: Origin, backend: FakeBackend) -> BlobFetcher:
    f = BlobFetcher(origin.store, Router([("library/.*", backend)]), worker=origin.worker, clock=origin.clock)
    origin.serve(PEER, fetcher=f)
    origin.http = OriginHTTP(origin.node, reads=origin.worker)
    origin.stub = origin.stub_for(origin.http.resource())
    return f


def growing(fetcher: BlobFetcher) -> GrowingFile | None:
    found: GrowingFile | None = result_of(fetcher.growing(NS, DIGEST))
    return found


def test_a_running_fetch_is_readable_as_it_arrives_and_ends_once_committed(
    origin: Origin, fetcher: BlobFetcher, backend: GrowingBackend
) -> None:
    file = growing(fetcher)  # starts the fetch
    assert file is not None and file.live and file.length == len(DATA)
    assert file.written == HALF and fetcher.fetching(DIGEST)
    ended = file.ended()
    assert not ended.called
    fd = file.open_reader()
    try:
        assert os.pread(fd, HALF, 0) == DATA[:HALF]
    finally:
        os.close(fd)
    backend.rest.callback(None)
    assert ended.called and file.succeeded
    assert result_of(origin.store.stat(DIGEST)) == len(DATA)
    assert growing(fetcher) is None  # held now: peer to peer, not a stream


def test_a_wrong_blob_ends_the_file_with_an_error_and_leaves_nothing(
    origin: Origin, fetcher: BlobFetcher, backend: GrowingBackend
) -> None:
    backend.blobs[DIGEST.hex] = DATA[::-1]  # other bytes, the same length
    file = growing(fetcher)
    assert file is not None
    ended = file.ended()
    failures: list[Any] = []
    ended.addErrback(failures.append)
    backend.rest.callback(None)
    assert failures and not file.live
    assert result_of(origin.store.stat(DIGEST)) is None
    assert os.listdir(os.path.join(origin.root, "uploads")) == []


def test_a_backend_that_cannot_tell_its_progress_has_no_file_to_read(origin: Origin) -> None:
    plain = FakeBackend()
    plain.blobs[DIGEST.hex] = DATA
    plain.gate = Deferred()
    f = BlobFetcher(origin.store, Router([("library/.*", plain)]), worker=origin.worker, clock=origin.clock)
    assert result_of(f.growing(NS, DIGEST)) is None
    assert f.fetching(DIGEST)
    plain.gate.callback(None)


def _stream(origin: Origin, headers: dict[bytes, list[bytes]] | None = None) -> Deferred[Any]:
    async def go() -> tuple[int, bytes]:
        url = f"http://origin.test/namespace/{NS}/blobs/{DIGEST}"
        response = await origin.stub.request("GET", url, headers={b"Kraken-Stream": [b"1"], **(headers or {})})
        return response.code, await treq.content(response)

    return Deferred.fromCoroutine(go())


def flush(origin: Origin) -> None:
    """Deliver what the stubbed clients and the origin have written so far (nothing waits on the clock)."""
    for stub in origin._stubs:
        stub.flush()


def test_a_stream_get_answers_the_fetch_as_it_arrives_and_the_whole_blob_once_proven(
    origin: Origin, fetcher: BlobFetcher, backend: GrowingBackend
) -> None:
    answer = _stream(origin)
    flush(origin)
    assert not answer.called  # the last byte waits for the commit
    backend.rest.callback(None)
    assert origin.run(answer) == (200, DATA)


def test_a_stream_get_of_a_held_blob_is_204_at_once(
    origin: Origin, fetcher: BlobFetcher, backend: GrowingBackend
) -> None:
    backend.rest.callback(None)
    assert result_of(fetcher.ensure(NS, DIGEST))
    assert origin.run(_stream(origin)) == (204, b"")


def test_one_agent_streams_a_blob_being_fetched_and_the_next_hears_204_until_that_stream_ends(
    origin: Origin, fetcher: BlobFetcher, backend: GrowingBackend
) -> None:
    first = _stream(origin)
    flush(origin)
    assert not first.called
    assert origin.run(_stream(origin)) == (204, b"")  # fetch_streams 1: the second waits for peer to peer
    backend.rest.callback(None)
    assert origin.run(first) == (200, DATA)
    assert origin.http._streaming == {}  # the count went with the stream


def test_with_fetch_streams_two_a_second_agent_streams_too(
    origin: Origin, fetcher: BlobFetcher, backend: GrowingBackend
) -> None:
    origin.http = OriginHTTP(origin.node, reads=origin.worker, streams=2)
    origin.stub = origin.stub_for(origin.http.resource())
    first, second = _stream(origin), _stream(origin)
    flush(origin)
    assert origin.run(_stream(origin)) == (204, b"")  # a third
    backend.rest.callback(None)
    assert origin.run(first) == (200, DATA) and origin.run(second) == (200, DATA)


def test_a_stream_get_with_a_range_gets_those_bytes(
    origin: Origin, fetcher: BlobFetcher, backend: GrowingBackend
) -> None:
    answer = _stream(origin, {b"Range": [b"bytes=3-9"]})
    backend.rest.callback(None)
    assert origin.run(answer) == (206, DATA[3:10])


def test_a_stream_get_of_a_wrong_blob_never_completes(
    origin: Origin, fetcher: BlobFetcher, backend: GrowingBackend
) -> None:
    backend.blobs[DIGEST.hex] = DATA[::-1]
    answer = _stream(origin)
    backend.rest.callback(None)
    failures: list[Any] = []
    answer.addErrback(failures.append)
    origin.run(answer.addCallback(lambda _: None))
    assert failures and failures[0].check(ResponseFailed, PotentialDataLoss), failures  # aborted: never complete
    assert result_of(origin.store.stat(DIGEST)) is None


def test_in_a_cluster_the_backend_after_the_other_origins_tells_its_progress(
    origin: Origin, backend: GrowingBackend
) -> None:
    others = FakeBackend()  # the other origins: they lack the blob
    f = BlobFetcher(origin.store, Router([("library/.*", _FirstOf([others, backend]))]), worker=origin.worker,
                    clock=origin.clock)  # fmt: skip
    file = result_of(f.growing(NS, DIGEST))
    assert file is not None and file.written == HALF
    backend.rest.callback(None)
    assert file.succeeded and result_of(origin.store.stat(DIGEST)) == len(DATA)


def test_a_blob_another_origin_copies_is_not_streamed(origin: Origin, backend: GrowingBackend) -> None:
    others = FakeBackend()  # the other origins hold it: their copy does not tell its progress
    others.blobs[DIGEST.hex] = DATA
    others.gate = Deferred()
    f = BlobFetcher(origin.store, Router([("library/.*", _FirstOf([others, backend]))]), worker=origin.worker,
                    clock=origin.clock)  # fmt: skip
    assert result_of(f.growing(NS, DIGEST)) is None and f.fetching(DIGEST)
    others.gate.callback(None)
    assert result_of(origin.store.stat(DIGEST)) == len(DATA)


@pytest.mark.parametrize("right", [True, False], ids=["the right blob", "a wrong blob"])
def test_the_commit_takes_the_sha256_hashed_as_written_and_refuses_a_wrong_one(
    origin: Origin, fetcher: BlobFetcher, backend: GrowingBackend, monkeypatch: pytest.MonkeyPatch, right: bool
) -> None:
    def no_second_read(*args: Any) -> str:
        raise AssertionError("the commit read the file again for its SHA-256")

    monkeypatch.setattr("kraken.store.uploads.hash_file", no_second_read)
    backend.hashes = True
    if not right:
        backend.blobs[DIGEST.hex] = DATA[::-1]
    file = growing(fetcher)
    assert file is not None
    backend.rest.callback(None)
    assert file.succeeded is right
    assert result_of(origin.store.stat(DIGEST)) == (len(DATA) if right else None)
