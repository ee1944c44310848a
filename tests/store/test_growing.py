"""``GrowingFile``: a file written front to back, its waiters, its end, its readers' descriptors; and the body sink
that feeds it (``kraken.backends.remote.BodySink``: bytes on disk told as they land, hashed in order)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from kraken.backends.remote import BodySink
from kraken.store.growing import GrowingFile, Restarted
from kraken.workers import InlineWorker


def _file(tmp_path: Path, data: bytes = b"") -> int:
    path = tmp_path / "data"
    path.write_bytes(data)
    return os.open(path, os.O_RDWR)


def test_waiters_fire_as_the_bytes_land_and_the_end_fires_once_proven(tmp_path: Path) -> None:
    g = GrowingFile(10)
    opened = g.opened()
    assert not opened.called and g.live
    g.attach(_file(tmp_path, b"0123456789"))
    assert opened.called
    first, whole = g.when_written(4), g.when_written(10)
    ended = g.ended()
    g.advance(5)
    assert first.called and not whole.called
    fd = g.open_reader()
    g.end(None)
    assert whole.called and ended.called and g.succeeded and not g.live
    assert os.pread(fd, 10, 0) == b"0123456789"  # the reader's own descriptor outlives the writer's
    os.close(fd)
    assert g.ended().called  # late callers learn the end at once


def test_a_failed_file_fails_its_end_and_its_late_readers(tmp_path: Path) -> None:
    g = GrowingFile(10)
    waiting = g.opened()
    failures: list[Failure] = []
    waiting.addErrback(failures.append)
    g.end(ValueError("upstream went away"))
    assert failures and failures[0].check(ValueError)
    late: list[Failure] = []
    g.ended().addErrback(late.append)
    g.opened().addErrback(late.append)
    assert len(late) == 2 and not g.live


def test_a_second_attach_ends_the_file_for_its_readers(tmp_path: Path) -> None:
    g = GrowingFile(10)
    g.attach(_file(tmp_path))
    g.advance(3)
    failures: list[Failure] = []
    g.ended().addErrback(failures.append)
    g.attach(os.open(tmp_path / "data", os.O_RDONLY))  # the download started again from byte 0
    assert failures and failures[0].check(Restarted) and not g.live


def test_a_cancelled_wait_is_forgotten(tmp_path: Path) -> None:
    g = GrowingFile(10)
    w = g.when_written(5)
    w.addErrback(lambda _: None)
    w.cancel()
    g.advance(10)  # nothing fires a cancelled waiter


def test_the_sink_tells_each_batch_on_disk_and_hashes_it_in_order(tmp_path: Path) -> None:
    fd = _file(tmp_path)
    told: list[int] = []
    hasher = hashlib.sha256()
    clock = Clock()
    sink = BodySink(fd, 0, 6, InlineWorker(), clock, 10.0, on_written=told.append, hasher=hasher)
    sink.makeConnection(StringTransport())
    done: list[Any] = []
    sink.done.addBoth(done.append)
    sink.dataReceived(b"abc")
    sink.dataReceived(b"def")
    sink.connectionLost(Failure(ResponseDone()))
    assert done == [6] and told == [3, 6]
    assert hasher.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()
    assert (tmp_path / "data").read_bytes() == b"abcdef"
