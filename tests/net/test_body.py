"""ThreadedFileProducer: reads in the worker, honours pause/resume/stop."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface.verify import verifyObject

from kraken.net.body import SourceTruncated, ThreadedFileProducer
from kraken.workers import InlineWorker

DATA = bytes(range(256)) * 40  # 10240 bytes


class Consumer:
    """Records writes; may call back into the producer from write()."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.on_write: Callable[[int], None] = lambda n: None

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self.on_write(len(self.chunks))

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class ManualWorker:
    """Runs nothing until the test says so, and records what ran where."""

    def __init__(self) -> None:
        self.pending: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []
        self.calls: list[str] = []

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((d, f, args))
        return d

    def step(self) -> None:
        d, f, args = self.pending.pop(0)
        self.calls.append(getattr(f, "__name__", repr(f)))
        try:
            result = f(*args)
        except Exception:
            d.errback(Failure())
        else:
            d.callback(result)

    def drain(self) -> None:
        while self.pending:
            self.step()


def result_of(d: Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


@pytest.fixture
def blob(tmp_path: Any) -> str:
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    return str(path)


def test_provides_ibodyproducer(blob: str) -> None:
    producer = ThreadedFileProducer(blob, 0, len(DATA), InlineWorker())
    assert verifyObject(IBodyProducer, producer)
    assert producer.length == len(DATA)


@pytest.mark.parametrize(
    ("offset", "length", "chunk"), [(0, len(DATA), 1 << 20), (0, len(DATA), 1000), (100, 5000, 999)]
)
def test_writes_the_range_in_chunks(blob: str, offset: int, length: int, chunk: int) -> None:
    consumer = Consumer()
    done = result_of(ThreadedFileProducer(blob, offset, length, InlineWorker(), chunk=chunk).startProducing(consumer))
    assert done == [None]
    assert consumer.data == DATA[offset : offset + length]
    assert max(len(c) for c in consumer.chunks) <= chunk


def test_empty_body_opens_nothing(tmp_path: Any) -> None:
    consumer = Consumer()
    missing = str(tmp_path / "missing")
    assert result_of(ThreadedFileProducer(missing, 0, 0, InlineWorker()).startProducing(consumer)) == [None]
    assert consumer.chunks == []


def test_file_io_happens_in_the_worker(blob: str) -> None:
    worker = ManualWorker()
    consumer = Consumer()
    done = result_of(ThreadedFileProducer(blob, 0, 3000, worker, chunk=1000).startProducing(consumer))
    assert consumer.chunks == [] and done == [], "nothing is read until the worker runs"
    worker.drain()
    assert done == [None]
    assert consumer.data == DATA[:3000]
    assert worker.calls == ["open", "pread", "pread", "pread", "close"]


def test_pause_and_resume(blob: str) -> None:
    worker = ManualWorker()
    consumer = Consumer()
    producer = ThreadedFileProducer(blob, 0, 3000, worker, chunk=1000)
    consumer.on_write = lambda n: producer.pauseProducing() if n == 1 else None
    done = result_of(producer.startProducing(consumer))
    worker.drain()
    assert len(consumer.chunks) == 1, "paused from inside write()"
    assert done == []
    assert worker.pending == [], "at most one chunk is read ahead while paused"
    producer.resumeProducing()
    worker.drain()
    assert consumer.data == DATA[:3000]
    assert done == [None]


def test_paused_before_the_first_read_completes(blob: str) -> None:
    worker = ManualWorker()
    consumer = Consumer()
    producer = ThreadedFileProducer(blob, 0, 1500, worker, chunk=1000)
    done = result_of(producer.startProducing(consumer))
    worker.step()  # open
    producer.pauseProducing()
    worker.drain()
    assert consumer.chunks == [], "data read while paused is held back"
    producer.resumeProducing()
    worker.drain()
    assert consumer.data == DATA[:1500]
    assert done == [None]


def test_stop_producing_never_fires_and_closes_the_file(blob: str) -> None:
    worker = ManualWorker()
    consumer = Consumer()
    producer = ThreadedFileProducer(blob, 0, 3000, worker, chunk=1000)
    consumer.on_write = lambda n: producer.stopProducing()
    done = result_of(producer.startProducing(consumer))
    worker.drain()
    assert len(consumer.chunks) == 1
    assert done == [], "IBodyProducer: the Deferred never fires after stopProducing"
    assert worker.calls[-1] == "close"


def test_stop_while_paused(blob: str) -> None:
    worker = ManualWorker()
    consumer = Consumer()
    producer = ThreadedFileProducer(blob, 0, 3000, worker, chunk=1000)
    consumer.on_write = lambda n: producer.pauseProducing()
    done = result_of(producer.startProducing(consumer))
    worker.drain()
    producer.stopProducing()
    worker.drain()
    assert len(consumer.chunks) == 1
    assert done == []
    assert worker.calls[-1] == "close"


def test_cancel_stops_production(blob: str) -> None:
    worker = ManualWorker()
    consumer = Consumer()
    d = ThreadedFileProducer(blob, 0, 3000, worker, chunk=1000).startProducing(consumer)
    done = result_of(d)
    worker.step()  # open
    d.cancel()
    worker.drain()
    assert consumer.chunks == []
    assert isinstance(done[0], Failure) and done[0].check(CancelledError)
    assert worker.calls[-1] == "close"


def test_short_file_fails(blob: str) -> None:
    consumer = Consumer()
    done = result_of(ThreadedFileProducer(blob, 10000, 500, InlineWorker()).startProducing(consumer))
    assert isinstance(done[0], Failure) and done[0].check(SourceTruncated)
    assert consumer.data == DATA[10000:]


def test_missing_file_fails(tmp_path: Any) -> None:
    done = result_of(ThreadedFileProducer(str(tmp_path / "nope"), 0, 10, InlineWorker()).startProducing(Consumer()))
    assert isinstance(done[0], Failure) and done[0].check(FileNotFoundError)


def test_file_descriptor_closed_on_success(blob: str) -> None:
    opened: list[int] = []
    closed: list[int] = []

    class Spy(InlineWorker):
        def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
            d = super().run(f, *args, **kwargs)
            if f is os.open:
                d.addCallback(lambda fd: opened.append(fd) or fd)
            if f is os.close:
                closed.append(args[0])
            return d

    assert result_of(ThreadedFileProducer(blob, 0, 10, Spy()).startProducing(Consumer())) == [None]
    assert opened == closed and len(opened) == 1


def test_produces_once(blob: str) -> None:
    producer = ThreadedFileProducer(blob, 0, 10, InlineWorker())
    producer.startProducing(Consumer())
    with pytest.raises(RuntimeError):
        producer.startProducing(Consumer())


def test_rejects_bad_arguments(blob: str) -> None:
    for kwargs in ({"offset": -1, "length": 1}, {"offset": 0, "length": -1}, {"offset": 0, "length": 1, "chunk": 0}):
        with pytest.raises(ValueError):
            ThreadedFileProducer(blob, worker=InlineWorker(), **kwargs)
