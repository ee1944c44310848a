"""BodySpool: request bodies written and hashed in a worker as they arrive,
and UploadArea taking a whole-upload body by renaming it."""

import hashlib
import os

import pytest
from manual_worker import ManualWorker
from twisted.internet.defer import Deferred, fail

from kraken.core import Digest
from kraken.store import UploadArea
from kraken.store.spool import HIGH_WATER, BodySpool, BodyTooLarge
from kraken.workers import InlineWorker


class FailingWorker:
    def run(self, f, *args):
        return fail(OSError("disk full"))


class Flow:
    def __init__(self):
        self.events = []

    def pause(self):
        self.events.append("pause")

    def resume(self):
        self.events.append("resume")


def spool(tmp_path, worker=None):
    flow = Flow()
    return BodySpool(str(tmp_path), worker or InlineWorker(), pause=flow.pause, resume=flow.resume), flow


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def test_chunks_are_written_and_hashed(tmp_path):
    s, flow = spool(tmp_path)
    chunks = [os.urandom(1000), b"", os.urandom(70_000), b"tail"]
    for c in chunks:
        s.write(c)
    assert result(s.done_receiving()) is None
    data = b"".join(chunks)
    assert s.size == len(data) == s.tell()
    assert s.hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    s.seek(0)
    assert s.read() == data
    assert flow.events == []
    s.close()
    assert not os.path.exists(s.path)


def test_backlog_pauses_the_connection_and_drains_resume_it(tmp_path):
    worker = ManualWorker()
    s, flow = spool(tmp_path, worker)
    chunk = b"x" * (1 << 20)
    for _ in range(HIGH_WATER // len(chunk) + 2):
        s.write(chunk)
    assert flow.events == ["pause"], "one pause however many chunks pile up"
    with pytest.raises(RuntimeError):
        s.read()  # nothing may be read before it is on disk
    while worker.jobs:
        worker.step()
    assert flow.events == ["pause", "resume"]
    assert result(s.when_flushed()) is None
    assert os.path.getsize(s.path) == s.size


def test_no_resume_once_the_body_is_complete(tmp_path):
    """After the last byte twisted.web owns the transport: a late resume
    from the spool would un-pause a connection it paused for its own reasons."""
    worker = ManualWorker()
    s, flow = spool(tmp_path, worker)
    s.write(b"y" * (HIGH_WATER + 1))
    s.write(b"z")
    flushed = s.done_receiving()
    while worker.jobs:
        worker.step()
    assert result(flushed) is None
    assert flow.events == ["pause"]


def test_write_failure_fails_the_flush_and_reads(tmp_path):
    s, _ = spool(tmp_path, FailingWorker())
    s.write(b"data")
    failure = result(s.done_receiving())
    assert failure.check(OSError)
    with pytest.raises(OSError):
        s.read()
    s.close()
    assert not os.path.exists(s.path)


def test_with_a_hash_worker_a_write_failure_is_the_write_s_own(tmp_path):
    errors = []
    s = BodySpool(
        str(tmp_path),
        FailingWorker(),
        pause=lambda: None,
        resume=lambda: None,
        error=errors.append,
        hash_worker=InlineWorker(),
        piece_length=4,
    )
    s.write(b"data")
    failure = result(s.done_receiving())
    assert failure.check(OSError) and [e.value for e in errors] == [failure.value]
    assert not os.path.exists(s.path)


def test_with_a_hash_worker_the_whole_and_its_pieces_are_hashed(tmp_path):
    s = BodySpool(
        str(tmp_path),
        InlineWorker(),
        pause=lambda: None,
        resume=lambda: None,
        hash_worker=InlineWorker(),
        piece_length=4,
    )
    for chunk in (b"abc", b"defgh", b"ij"):
        s.write(chunk)
    result(s.done_receiving())
    assert s.running_hash().hexdigest() == hashlib.sha256(b"abcdefghij").hexdigest()
    assert s.pieces.finish().piece_sums == tuple(hashlib.sha256(p).digest() for p in (b"abcd", b"efgh", b"ij"))
    s.seek(0)
    assert s.read() == b"abcdefghij"
    s.close()


def make_area(tmp_path):
    return UploadArea(str(tmp_path / "uploads"), InlineWorker())


def run(coro):
    return result(Deferred.fromCoroutine(coro))


def test_append_adopts_a_whole_upload_body_by_rename(tmp_path):
    area = make_area(tmp_path)
    uid = run(area.create())
    data = os.urandom(300_000)
    s = area.spool(pause=lambda: None, resume=lambda: None)
    s.write(data)
    result(s.done_receiving())
    s.seek(0)
    assert run(area.append(uid, s, 0, len(data))) == len(data)
    assert not os.path.exists(s.path), "renamed, not copied"
    with open(area.path(uid), "rb") as f:
        assert f.read() == data
    assert run(area.digest(uid)) == Digest.from_bytes(data)
    s.close()  # what the request does when it finishes: the upload stays
    assert os.path.exists(area.path(uid))
    assert sorted(os.listdir(tmp_path / "uploads")) == [uid]


def test_append_of_a_later_chunk_copies_and_keeps_hashing(tmp_path):
    area = make_area(tmp_path)
    uid = run(area.create())
    first, second = os.urandom(1000), os.urandom(5000)
    for chunk in (first, second):
        s = area.spool(pause=lambda: None, resume=lambda: None)
        s.write(chunk)
        result(s.done_receiving())
        s.seek(0)
        run(area.append(uid, s))
        s.close()
    assert run(area.digest(uid)) == Digest.from_bytes(first + second)
    assert sorted(os.listdir(tmp_path / "uploads")) == [uid], "spool files are gone"


def test_leftover_spools_are_removed_at_start(tmp_path):
    area = make_area(tmp_path)
    s = area.spool(pause=lambda: None, resume=lambda: None)
    s.write(b"half a body")
    make_area(tmp_path)  # a restart
    assert not os.path.exists(s.path)


def test_ordinary_append_still_works_with_a_plain_file(tmp_path):
    import io

    area = make_area(tmp_path)
    uid = run(area.create())
    assert run(area.append(uid, io.BytesIO(b"abc"), 0, 3)) == 3
    assert run(area.digest(uid)) == Digest.from_bytes(b"abc")


def test_spooled_files_are_readable_like_other_blobs(tmp_path):
    s, _ = spool(tmp_path)
    assert os.stat(s.path).st_mode & 0o777 == 0o644
    s.close()


def test_a_body_past_the_limit_is_refused_at_once_and_deleted(tmp_path):
    """The byte past ``limit`` stops the body, even while a batch is still being written: later chunks are
    dropped, the file is gone once the batch in flight is done, and only then is ``error`` called, once, with
    ``BodyTooLarge`` (so the client's answer never comes while any of the body is on disk)."""
    worker = ManualWorker()
    errors = []
    s = BodySpool(str(tmp_path), worker, pause=lambda: None, resume=lambda: None, error=errors.append, limit=100)
    s.write(b"a" * 60)  # a batch in flight
    s.write(b"b" * 41)
    s.write(b"c")
    assert errors == []
    assert os.path.exists(s.path)  # the worker still writes to it
    while worker.jobs:
        worker.step()
    assert not os.path.exists(s.path)
    assert [f.check(BodyTooLarge) for f in errors] == [BodyTooLarge]
    assert "over the limit of 100 bytes (101 bytes received)" in str(errors[0].value)
    assert result(s.done_receiving()).check(BodyTooLarge)


def test_a_body_at_the_limit_is_taken(tmp_path):
    errors = []
    s = BodySpool(str(tmp_path), InlineWorker(), pause=lambda: None, resume=lambda: None, error=errors.append, limit=10)
    s.write(b"0123456789")
    assert result(s.done_receiving()) is None and errors == []
    s.close()


def test_the_connection_resumes_only_once_nothing_holds_it(tmp_path):
    worker = ManualWorker()
    s, flow = spool(tmp_path, worker)
    s.hold("origin")  # a tee waiting for where it sends the body
    s.write(b"x" * (HIGH_WATER + 1))  # and the disk's backlog
    assert flow.events == ["pause"]
    while worker.jobs:
        worker.step()
    assert flow.events == ["pause"], "the tee still holds it"
    s.release("origin")
    assert flow.events == ["pause", "resume"]
    s.release("origin")
    assert flow.events == ["pause", "resume"], "once"


def test_a_dropped_body_keeps_its_connection_paused_whoever_lets_go(tmp_path):
    s, flow = spool(tmp_path, FailingWorker())
    s.hold("origin")
    s.write(b"x")  # the write fails: the body is dropped, the refusal goes out while the connection is paused
    s.release("origin")
    assert flow.events == ["pause"]


def test_the_tee_sees_every_chunk_then_the_end(tmp_path):
    s, _ = spool(tmp_path)
    seen = []

    class Tee:
        def write(self, data):
            seen.append(data)

        def end(self):
            seen.append("end")

        def abort(self, why):
            seen.append(("abort", why))

    s.tee(Tee())
    s.write(b"a")
    s.write(b"b")
    result(s.done_receiving())
    s.close()
    assert seen == [b"a", b"b", "end"]

    cut, _ = spool(tmp_path)
    cut.tee(Tee())
    cut.write(b"c")
    cut.close()  # the client went away mid-body
    assert seen[-2:] == [b"c", ("abort", "the request ended before its body had all arrived")]


def test_a_close_while_a_batch_is_written_waits_for_it_and_logs_nothing(tmp_path):
    """The client went away mid-body (a proxy stopped streaming to an origin): the request ends at once, while
    the worker still writes a batch; the file is closed and deleted once that batch is done, not under it."""
    from twisted.logger import capturedLogs

    worker = ManualWorker()
    s, _ = spool(tmp_path, worker)
    s.write(b"x" * 1000)
    flushed = s.when_flushed()
    with capturedLogs() as events:
        s.close()
        s.write(b"y")  # late data of the closed request: dropped
        assert os.path.exists(s.path), "not under the batch being written"
        while worker.jobs:
            worker.step()
    assert not os.path.exists(s.path)
    assert [e for e in events if e.get("log_level") is not None and e["log_level"].name in ("error", "critical")] == []
    assert result(flushed).check(OSError)
