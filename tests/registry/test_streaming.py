"""Blobs served while they download (``kraken.registry.streaming``), through the real ``RegistryAPI`` over a real
``HTTPChannel`` on a ``StringTransport``, with a fake download that checks its pieces one by one on demand."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Site

from kraken.core import Digest
from kraken.files import OutOfSpace
from kraken.registry.errors import RangeInvalid
from kraken.registry.streaming import StreamingBlob, byte_range

from .conftest import Registry, parse_wire
from .memory import MemorySource

PIECE = 1000
DATA = bytes(range(256)) * 14  # 3584 bytes: pieces 0..2 whole, piece 3 of 584 bytes
DIGEST = Digest.from_bytes(DATA)


class FakeDownload:
    """An ``IncomingBlob`` whose pieces are checked when the test says so."""

    def __init__(self) -> None:
        self.digest = str(DIGEST)
        self.length = len(DATA)
        self.piece_length = PIECE
        self.have: set[int] = set()
        self.waiting: dict[int, list[Deferred[None]]] = {}
        self.end: list[Deferred[object]] = []
        self.reads: list[tuple[int, int]] = []
        self.closed = 0

    def check(self, *indexes: int) -> None:
        for i in indexes:
            self.have.add(i)
            for d in self.waiting.pop(i, []):
                d.callback(None)

    def finish(self, result: object = "path") -> None:
        ends, self.end = self.end, []
        for d in ends:
            d.callback(result) if not isinstance(result, Exception) else d.errback(result)

    def when_piece(self, index: int) -> Deferred[None]:
        if index in self.have:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self.waiting.setdefault(index, []).append(d)
        return d

    def verified(self) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.end.append(d)
        return d

    async def read(self, offset: int, size: int) -> bytes:
        assert all(i in self.have for i in range(offset // PIECE, (offset + size - 1) // PIECE + 1)), (offset, size)
        self.reads.append((offset, size))
        return DATA[offset : offset + size]

    def close(self) -> None:
        self.closed += 1


class StreamingSource(MemorySource):
    def __init__(self, root: str, download: FakeDownload) -> None:
        super().__init__(root)
        self.download = download

    async def stat_blob(self, repo: str, digest: Digest) -> int | None:
        return len(DATA) if digest == DIGEST else None

    async def blob_resource(self, repo: str, digest: Digest) -> IResource | None:
        return StreamingBlob(self.download) if digest == DIGEST else None


class Wire:
    """One HTTP connection to the registry: what went out so far, and the connection's fate."""

    def __init__(self, registry: Registry, headers: str = "") -> None:
        self.clock = registry.clock
        site = Site(registry.api.resource(), timeout=None, reactor=registry.clock)
        self.proto = site.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        request = f"GET /v2/a/blobs/{DIGEST} HTTP/1.1\r\nHost: registry.test\r\n{headers}\r\n"
        self.proto.dataReceived(request.encode())
        self.settle()

    def settle(self) -> None:
        for _ in range(50):
            self.clock.advance(0)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        return parse_wire(self.transport.value())

    def close(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def download() -> FakeDownload:
    return FakeDownload()


@pytest.fixture
def registry(tmp_path: Path, clock: task.Clock, download: FakeDownload) -> Registry:
    return Registry(tmp_path, clock, source=StreamingSource(str(tmp_path / "blobs"), download))


def test_the_first_bytes_go_out_before_the_last_piece_and_the_last_byte_after_the_check(
    registry: Registry, download: FakeDownload
) -> None:
    wire = Wire(registry)
    assert wire.transport.value() == b""  # nothing checked yet: no headers either
    download.check(0)
    wire.settle()
    status, headers, body = wire.response()
    assert (status, headers["content-length"], body) == (200, str(len(DATA)), DATA[:PIECE])
    assert headers["docker-content-digest"] == str(DIGEST)
    download.check(2, 3)  # out of order: nothing past piece 1 goes out before it
    wire.settle()
    assert wire.response()[2] == DATA[:PIECE]
    download.check(1)
    wire.settle()
    assert wire.response()[2] == DATA[:-1]  # every byte but the last: the whole blob is not checked yet
    download.finish()
    wire.settle()
    assert wire.response()[2] == DATA
    assert not wire.transport.disconnecting and download.closed == 1
    wire.close()


@pytest.mark.parametrize(
    ("value", "first", "last"),
    [("bytes=1500-", 1500, len(DATA) - 1), ("bytes=1500-2100", 1500, 2100), ("bytes=-100", len(DATA) - 100,
     len(DATA) - 1), ("bytes=3000-99999", 3000, len(DATA) - 1)],
)  # fmt: skip
def test_a_range_is_206_as_soon_as_its_first_piece_is_checked(
    registry: Registry, download: FakeDownload, value: str, first: int, last: int
) -> None:
    wire = Wire(registry, f"Range: {value}\r\n")
    download.check(first // PIECE)
    wire.settle()
    status, headers, body = wire.response()
    assert status == 206
    assert headers["content-range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert headers["content-length"] == str(last - first + 1)
    assert body == DATA[first : min(last, (first // PIECE + 1) * PIECE)]
    download.check(0, 1, 2, 3)
    download.finish()
    wire.settle()
    assert wire.response()[2] == DATA[first : last + 1]
    assert all(offset >= first for offset, _ in download.reads)  # nothing before the range is read
    wire.close()


def test_an_unsatisfiable_range_is_416_with_the_size(registry: Registry, download: FakeDownload) -> None:
    r = registry.get(f"/v2/a/blobs/{DIGEST}", headers={"Range": f"bytes={len(DATA)}-"})
    assert (r.code, r.error_code, r.header("Content-Range")) == (416, "RANGE_INVALID", f"bytes */{len(DATA)}")
    assert download.closed == 1  # the partial file opened for the answer is closed with the refusal


def test_a_backwards_range_is_416_and_closes_the_blob(registry: Registry, download: FakeDownload) -> None:
    r = registry.get(f"/v2/a/blobs/{DIGEST}", headers={"Range": "bytes=500-0"})
    assert (r.code, r.error_code) == (416, "RANGE_INVALID")
    assert download.closed == 1


def test_a_failed_whole_blob_check_aborts_the_connection(registry: Registry, download: FakeDownload) -> None:
    wire = Wire(registry)
    download.check(0, 1, 2, 3)
    wire.settle()
    with capturedLogs() as events:
        download.finish(ValueError("the downloaded blob is sha256:0000, not the digest asked for"))
        wire.settle()
    assert wire.response()[2] == DATA[:-1]  # one byte short of Content-Length: never a whole response
    assert wire.transport.disconnected  # aborted
    [warning] = [e for e in events if e["log_level"] is LogLevel.warn]
    assert "connection aborted" in warning["log_format"] and "sha256:0000" in warning["error"]
    assert download.closed == 1
    wire.close()


def test_a_download_failing_before_any_byte_is_a_502_in_oci_json(registry: Registry, download: FakeDownload) -> None:
    wire = Wire(registry)
    download.finish(RuntimeError("no piece arrived for 60 s"))
    wire.settle()
    status, headers, body = wire.response()
    assert (status, headers["content-type"]) == (502, "application/json")
    assert b'"code":"UNKNOWN"' in body and b"no piece arrived" in body
    assert len(body) == int(headers["content-length"])
    wire.close()


def test_a_download_stopped_by_a_full_disk_before_any_byte_is_a_507(registry: Registry, download: FakeDownload) -> None:
    wire = Wire(registry)
    download.finish(OutOfSpace("the partial download", OSError(errno.ENOSPC, "No space left on device")))
    wire.settle()
    status, headers, body = wire.response()
    assert (status, headers["content-type"]) == (507, "application/json")
    assert b'"code":"UNKNOWN"' in body and b"no space left on device" in body and b"ENOSPC" in body
    wire.close()


def test_a_client_that_leaves_stops_the_reads_and_is_logged_at_debug_only(
    registry: Registry, download: FakeDownload
) -> None:
    wire = Wire(registry)
    download.check(0)
    wire.settle()
    reads = list(download.reads)
    with capturedLogs() as events:
        wire.close()
        download.check(1, 2, 3)
        download.finish()
        wire.settle()
    assert download.reads == reads and download.closed == 1
    assert not download.end  # it stopped waiting for the end of the download
    assert [e["log_level"] for e in events if "client closed" in e.get("log_format", "")] == [LogLevel.debug]
    assert not [e for e in events if e["log_level"] >= LogLevel.warn]


def test_a_paused_transport_pauses_the_reads(registry: Registry, download: FakeDownload) -> None:
    wire = Wire(registry)
    producer: Any = wire.transport.producer  # the channel, which pauses and resumes the request's producer
    producer.pauseProducing()
    download.check(0, 1, 2, 3)
    wire.settle()
    assert wire.transport.value() == b"" and download.reads == [(0, PIECE)]  # one chunk read, none written
    producer.resumeProducing()
    download.finish()
    wire.settle()
    assert wire.response()[2] == DATA
    wire.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("bytes=0-", (0, 99)), ("bytes=5-9", (5, 9)), ("bytes=-10", (90, 99)), ("bytes=-500", (0, 99)),
     ("bytes=90-500", (90, 99)), ("items=0-5", None), ("bytes=0-1,5-6", None), ("bytes=x-", None)],
)  # fmt: skip
def test_byte_range(value: str | None, expected: tuple[int, int] | None) -> None:
    assert byte_range(None if value is None else value.encode(), 100) == expected


@pytest.mark.parametrize("value", ["bytes=100-", "bytes=-0", "bytes=200-300"])
def test_byte_range_unsatisfiable(value: str) -> None:
    with pytest.raises(RangeInvalid) as e:
        byte_range(value.encode(), 100)
    assert (e.value.status, e.value.headers) == (416, {"Content-Range": "bytes */100"})
