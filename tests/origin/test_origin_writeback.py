"""WriteBackQueue over a real SQLite file: an inline pool and a Clock for the
unit tests (synchronous, no waiting); one test on the real reactor with the
untouched pool and the filesystem backend."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from results import result_of
from twisted.logger import capturedLogs
from writeback_fakes import FakeBackend, InlineReactor, inline_pool
from writeback_harness import inline_clock  # noqa: F401  (the reactor fixture)

from kraken.backends import FSBackend, Router, ShardedDockerBlobPather
from kraken.core import Digest
from kraken.origin.writeback import WriteBackQueue, open_pool
from kraken.workers import InlineWorker

NS = "library/ubuntu"


class Blobs:
    """Cached blobs as files under a directory (what ``CAStore.blob_path`` gives)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: Digest) -> str:
        return str(self.root / digest.hex)

    def add(self, data: bytes) -> Digest:
        digest = Digest.from_bytes(data)
        (self.root / digest.hex).write_bytes(data)
        return digest


@pytest.fixture
def blobs(tmp_path: Path) -> Blobs:
    return Blobs(tmp_path / "cache")


@pytest.fixture
def backend(reactor: InlineReactor) -> FakeBackend:
    return FakeBackend(reactor)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "writeback.db")


class Queues:
    """Opens queues (started) and stops them all at the end."""

    def __init__(self, db: str, reactor: InlineReactor, blobs: Blobs) -> None:
        self.db, self.reactor, self.blobs = db, reactor, blobs
        self.started: list[WriteBackQueue] = []

    def open(self, router: Router, **kwargs: Any) -> WriteBackQueue:
        q = WriteBackQueue(
            inline_pool(self.db, self.reactor),
            router=router,
            blob_path=self.blobs.path,
            worker=InlineWorker(),
            clock=self.reactor,
            **kwargs,
        )
        q.startService()
        self.started.append(q)
        return q

    def stop(self, q: WriteBackQueue) -> None:
        result_of(q.stopService())
        self.started.remove(q)


@pytest.fixture
def queues(db: str, reactor: InlineReactor, blobs: Blobs) -> Iterator[Queues]:
    qs = Queues(db, reactor, blobs)
    yield qs
    for q in list(qs.started):
        qs.stop(q)


@pytest.fixture
def queue(queues: Queues, backend: FakeBackend) -> WriteBackQueue:
    return queues.open(Router([(".*", backend)]), backoff_min=1.0, backoff_max=10.0)


def rows(db: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT namespace, digest, attempts, next_attempt, last_error FROM writeback ORDER BY digest"
        ).fetchall()


def test_a_committed_blob_is_uploaded_and_the_task_deleted(
    queue: WriteBackQueue, backend: FakeBackend, blobs: Blobs, db: str
) -> None:
    digest = blobs.add(b"layer one")
    with capturedLogs() as events:
        result_of(queue.add(NS, digest))
    assert backend.blobs == {digest.hex: b"layer one"}
    assert backend.calls == [("stat", NS, digest.hex), ("upload", NS, digest.hex)]
    assert not queue.pending(digest)
    assert rows(db) == []
    stats = queue.stats()
    assert (stats.queued, stats.uploaded, stats.failures, stats.pending) == (1, 1, 0, 0)
    [done] = [e for e in events if e.get("outcome") == "uploaded"]
    assert done["digest"] == str(digest) and done["namespace"] == NS


def test_a_blob_the_backend_has_is_done_without_upload(
    queue: WriteBackQueue, backend: FakeBackend, blobs: Blobs, db: str
) -> None:
    digest = blobs.add(b"already there")
    backend.blobs[digest.hex] = b"already there"
    result_of(queue.add(NS, digest))
    assert backend.uploads() == []
    assert queue.stats().existed == 1
    assert not queue.pending(digest) and rows(db) == []


def test_failures_are_retried_with_doubling_backoff(
    queue: WriteBackQueue, backend: FakeBackend, blobs: Blobs, reactor: InlineReactor, db: str
) -> None:
    digest = blobs.add(b"flaky")
    backend.fail_uploads = 5
    result_of(queue.add(NS, digest))
    assert backend.upload_times == [1000.0]
    assert queue.pending(digest)
    [(ns, d, attempts, next_attempt, error)] = rows(db)
    assert (ns, d, attempts, next_attempt) == (NS, str(digest), 1, 1001.0)
    assert error == "BackendUnavailable: backend down"

    # 1 s, 2 s, 4 s, 8 s, then capped at 10 s; never early.
    for _ in range(60):
        reactor.advance(0.5)
    assert backend.upload_times == [1000.0, 1001.0, 1003.0, 1007.0, 1015.0, 1025.0]
    assert backend.blobs == {digest.hex: b"flaky"}
    assert not queue.pending(digest) and rows(db) == []
    assert queue.stats().failures == 5
    assert [c for c in reactor.getDelayedCalls() if c.active()] == []


def test_backoff_schedule(queue: WriteBackQueue) -> None:
    assert [queue.backoff(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_any_error_is_retried_and_logged_with_its_traceback(
    queue: WriteBackQueue, backend: FakeBackend, blobs: Blobs, reactor: InlineReactor
) -> None:
    digest = blobs.add(b"bug")
    backend.fail_uploads = 1
    backend.error = RuntimeError("oops")
    with capturedLogs() as events:
        result_of(queue.add(NS, digest))
    [failed] = [e for e in events if "log_failure" in e]
    assert failed["error"] == "RuntimeError: oops" and failed["attempts"] == 1
    reactor.advance(1.0)
    assert backend.blobs == {digest.hex: b"bug"}


def test_no_backend_for_the_namespace_drops_the_task(
    queues: Queues, backend: FakeBackend, blobs: Blobs, db: str
) -> None:
    queue = queues.open(Router([("library/.*", backend)]))
    digest = blobs.add(b"elsewhere")
    with capturedLogs() as events:
        result_of(queue.add("other/repo", digest))
    assert backend.calls == []
    assert queue.stats().dropped == 1
    assert not queue.pending(digest) and rows(db) == []
    [dropped] = [e for e in events if e.get("namespace") == "other/repo" and "dropped" in e["log_format"]]
    assert "no backend for namespace" in dropped["error"]


def test_a_cached_blob_that_is_gone_is_dropped(queue: WriteBackQueue, backend: FakeBackend, blobs: Blobs) -> None:
    digest = blobs.add(b"deleted by hand")
    os.unlink(blobs.path(digest))
    result_of(queue.add(NS, digest))
    assert backend.uploads() == [] and queue.stats().missing == 1
    assert not queue.pending(digest)


def test_adding_an_existing_task_is_a_no_op(queue: WriteBackQueue, backend: FakeBackend, blobs: Blobs, db: str) -> None:
    digest = blobs.add(b"twice")
    backend.fail_uploads = 1
    result_of(queue.add(NS, digest))
    result_of(queue.add(NS, digest))
    assert queue.stats().queued == 1
    [(_, _, attempts, next_attempt, _)] = rows(db)
    assert (attempts, next_attempt) == (1, 1001.0)  # the retry state is kept
    assert backend.uploads() == [digest.hex]  # no upload started by the second add


def test_one_digest_in_two_namespaces_is_pending_until_both_are_done(
    queues: Queues, backend: FakeBackend, blobs: Blobs, reactor: InlineReactor
) -> None:
    other = FakeBackend(reactor)
    other.fail_uploads = 1
    queue = queues.open(Router([("a/.*", backend), ("b/.*", other)]))
    digest = blobs.add(b"shared layer")
    result_of(queue.add("a/x", digest))
    result_of(queue.add("b/y", digest))
    assert digest.hex in backend.blobs and queue.pending(digest)
    reactor.advance(1.0)
    assert digest.hex in other.blobs and not queue.pending(digest)


def test_concurrency_limits_uploads_in_flight(queues: Queues, backend: FakeBackend, blobs: Blobs) -> None:
    queue = queues.open(Router([(".*", backend)]), concurrency=2)
    backend.hold = True
    digests = [blobs.add(f"blob {i}".encode()) for i in range(5)]
    for d in digests:
        result_of(queue.add(NS, d))
    assert len(backend.held) == 2
    backend.held[0].callback(None)
    assert len(backend.held) == 3  # one finished, the next started
    while len([d for d in backend.held if not d.called]):
        next(d for d in backend.held if not d.called).callback(None)
    assert len(backend.held) == 5
    assert sorted(backend.blobs) == sorted(d.hex for d in digests)
    assert all(not queue.pending(d) for d in digests)
    assert result_of(queue.when_idle()) is None


def test_stopping_cancels_uploads_and_keeps_their_tasks(
    queues: Queues, backend: FakeBackend, blobs: Blobs, db: str
) -> None:
    queue = queues.open(Router([(".*", backend)]))
    backend.hold = True
    digest = blobs.add(b"interrupted")
    result_of(queue.add(NS, digest))
    [held] = backend.held
    queues.stop(queue)
    assert held.called  # cancelled
    assert [r[:3] for r in rows(db)] == [(NS, str(digest), 0)]


def test_a_restart_picks_up_pending_tasks(
    queues: Queues, backend: FakeBackend, blobs: Blobs, reactor: InlineReactor, db: str
) -> None:
    first = queues.open(Router([(".*", backend)]), backoff_min=60.0, backoff_max=600.0)
    backend.fail_uploads = 100
    d1, d2 = blobs.add(b"one"), blobs.add(b"two")
    result_of(first.add(NS, d1))
    result_of(first.add(NS, d2))
    assert len(rows(db)) == 2 and backend.blobs == {}
    queues.stop(first)

    backend.fail_uploads = 0
    reactor.advance(1.0)  # well inside the 60 s backoff: due anyway at start
    second = queues.open(Router([(".*", backend)]))
    assert second.stats().pending == 0
    assert sorted(backend.blobs) == sorted([d1.hex, d2.hex])
    assert rows(db) == []


def test_pending_is_known_from_the_database_at_start(
    queues: Queues, backend: FakeBackend, blobs: Blobs, db: str
) -> None:
    first = queues.open(Router([(".*", backend)]))
    backend.hold = True
    digest = blobs.add(b"waiting")
    result_of(first.add(NS, digest))
    queues.stop(first)
    second = queues.open(Router([(".*", backend)]))  # the upload starts again and is held
    assert second.pending(digest) and second.stats().pending == 1


def test_bad_settings_are_refused(db: str, reactor: InlineReactor, blobs: Blobs) -> None:
    for kwargs in ({"concurrency": 0}, {"backoff_min": 0.0}, {"backoff_min": 5.0, "backoff_max": 1.0}):
        with pytest.raises(ValueError):
            WriteBackQueue(
                inline_pool(db, reactor),
                router=Router([]),
                blob_path=blobs.path,
                worker=InlineWorker(),
                clock=reactor,
                **kwargs,  # type: ignore[arg-type]
            )


@pytest_twisted.ensureDeferred
async def test_real_pool_writes_back_to_the_filesystem_backend(tmp_path: Path) -> None:
    from twisted.internet import reactor

    blobs = Blobs(tmp_path / "cache")
    digest = blobs.add(b"through real threads")
    fs = FSBackend(str(tmp_path / "registry"), ShardedDockerBlobPather(), worker=InlineWorker())
    queue = WriteBackQueue(
        open_pool(str(tmp_path / "db" / "writeback.db"), reactor),
        router=Router([(".*", fs)]),
        blob_path=blobs.path,
        worker=InlineWorker(),
        clock=reactor,
    )
    queue.startService()
    try:
        await queue.add(NS, digest)
        await queue.when_idle()
    finally:
        await queue.stopService()
    data = tmp_path / "registry/docker/registry/v2/blobs/sha256" / digest.hex[:2] / digest.hex / "data"
    assert data.read_bytes() == b"through real threads"
    assert not queue.pending(digest)


def test_the_backlog_gives_the_depth_and_the_oldest_tasks_age(
    queue: WriteBackQueue, backend: FakeBackend, blobs: Blobs, reactor: InlineReactor
) -> None:
    assert result_of(queue.backlog()) == (0, 0.0)
    backend.fail_uploads = 10
    result_of(queue.add(NS, blobs.add(b"first")))
    reactor.advance(20.0)
    result_of(queue.add(NS, blobs.add(b"second")))
    reactor.advance(5.0)
    assert result_of(queue.backlog()) == (2, 25.0)
