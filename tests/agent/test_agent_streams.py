"""The agent's streaming source (``kraken.agent.streams``): a blob GET while the blob downloads reads the real
partial file (``kraken.store.downloads.PartialBlob``) as its pieces are written, through one descriptor that
survives the install's move; cached, unknown and failing blobs are answered as before."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from agent_fakes import FakeScheduler, FakeTags
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Site

from kraken.agent.source import Mirror
from kraken.agent.streams import StreamingSource
from kraken.agent.tap import READ_ONLY_MESSAGE
from kraken.core import Digest, MetaInfo, PieceLengthRule
from kraken.registry.http import RegistryAPI
from kraken.store import CAStore
from kraken.workers import InlineWorker

PIECE = 1024
DATA = os.urandom(PIECE * 3 + 100)
INFO = MetaInfo.from_bytes(DATA, PIECE)


def run(coro: Any) -> Any:
    out: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(out.append)
    assert out, "did not finish"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


class Download:
    """A ``kraken.p2p.torrent.Download`` over a real partial blob, whose end the test decides."""

    def __init__(self, store: CAStore) -> None:
        self.partial = run(store.downloads.open(INFO))
        self.info = INFO
        self.data_path = self.partial.data_path
        self.cache_path = str(Path(self.data_path).parent.parent / "installed")
        self.when_piece = self.partial.when_piece
        self.ends: list[Deferred[str]] = []

    def finished(self) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.ends.append(d)
        return d

    def write(self, i: int) -> None:
        run(self.partial.write_piece(i, DATA[i * PIECE : (i + 1) * PIECE]))

    def install(self) -> None:
        os.rename(self.data_path, self.cache_path)  # as the store's install moves it; the reader's fd follows
        for d in self.ends:
            d.callback(self.cache_path)


class Scheduler(FakeScheduler):
    def __init__(self, cache: Path) -> None:
        super().__init__(cache)
        self.streaming: dict[Digest, Download] = {}

    async def start(self, namespace: str, digest: Digest) -> Any:
        return self.streaming[digest] if digest in self.streaming else await self.download(namespace, digest)


class Agent:
    def __init__(self, tmp_path: Path, clock: task.Clock) -> None:
        self.clock = clock
        self.scheduler = Scheduler(tmp_path / "cache")
        self.store = CAStore(
            str(tmp_path / "store"), worker=InlineWorker(), piece_rule=PieceLengthRule(((0, PIECE),)), now=clock.seconds
        )
        mirror = Mirror(self.size, clock, 5.0)
        source = StreamingSource(
            self.scheduler, FakeTags(), worker=InlineWorker(), max_manifest_size=4 << 20, mirror=mirror
        )
        self.api = RegistryAPI(source, None, clock=clock, read_only=True, read_only_message=READ_ONLY_MESSAGE)

    async def size(self, namespace: str, digest: Digest) -> int | None:
        if digest in self.scheduler.streaming:
            return len(DATA)
        return 12 if digest in self.scheduler.paths else None  # b"cached bytes", b"failing": sizes unchecked here

    def get(self, digest: Digest, headers: str = "") -> StringTransport:
        proto = Site(self.api.resource(), timeout=None, reactor=self.clock).buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(f"GET /v2/a/b/blobs/{digest} HTTP/1.1\r\nHost: agent.test\r\n{headers}\r\n".encode())
        self.settle()
        transport.protocol = proto
        return transport

    def settle(self) -> None:
        for _ in range(50):
            self.clock.advance(0)


def parse(transport: StringTransport) -> tuple[int, dict[str, str], bytes]:
    head, _, body = transport.value().partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.fixture
def agent(tmp_path: Path, clock: task.Clock) -> Agent:
    return Agent(tmp_path, clock)


def test_a_range_of_a_blob_being_downloaded_is_read_from_the_partial_file(agent: Agent) -> None:
    download = agent.scheduler.streaming[INFO.digest] = Download(agent.store)
    transport = agent.get(INFO.digest, "Range: bytes=1500-\r\n")
    assert transport.value() == b""
    download.write(1)
    agent.settle()
    status, headers, body = parse(transport)
    assert (status, headers["content-range"], body) == (206, f"bytes 1500-{len(DATA) - 1}/{len(DATA)}", DATA[1500:2048])
    for i in (0, 2, 3):
        download.write(i)
    agent.settle()
    assert parse(transport)[2] == DATA[1500:-1]
    download.install()  # the partial file moves away; the open descriptor still reads it
    agent.settle()
    assert parse(transport)[2] == DATA[1500:]
    transport.protocol.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]


def test_cached_unknown_and_failing_blobs_are_answered_as_before(agent: Agent) -> None:
    cached = agent.scheduler.add(b"cached bytes")
    status, headers, body = parse(agent.get(cached))
    assert (status, body, headers["docker-content-digest"]) == (200, b"cached bytes", str(cached))
    assert parse(agent.get(Digest.from_bytes(b"nobody has it")))[0] == 404
    failing = agent.scheduler.add(b"failing")
    agent.scheduler.failing.add(failing)
    status, _, body = parse(agent.get(failing))
    assert status == 502 and b"no peer served" in body
