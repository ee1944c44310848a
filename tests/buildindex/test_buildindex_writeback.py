"""Tag write-back: the durable queue in the tag database and the loop that
drains it, over a fake tag archive, an inline SQLite pool and a fake clock."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from buildindex_fakes import FakeRegistryBackend, InlineReactor, MemoryBackend, open_store, result_of, tag_archive
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from writeback_harness import inline_clock  # noqa: F401  (the reactor fixture)

from kraken.buildindex.archive import TagArchive
from kraken.buildindex.tags import SCHEMA_VERSION, Pending, TagStore
from kraken.buildindex.writeback import TagWriteBack
from kraken.core import Digest

D1 = Digest.from_bytes(b"one")
D2 = Digest.from_bytes(b"two")


@pytest.fixture
def db(tmp_path: Any) -> str:
    return str(tmp_path / "tags.db")


@pytest.fixture
def scratch(tmp_path: Any) -> str:
    path = tmp_path / "scratch"
    path.mkdir()
    return str(path)


@pytest.fixture
def memory() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def archive(scratch: str, memory: MemoryBackend) -> TagArchive:
    return tag_archive(scratch, ("upstream/.*", "registry", FakeRegistryBackend()), (".*", "s3", memory))


class Node:
    """A tag store and its write-back loop on one clock; ``restart`` closes
    both and opens them again over the same database file."""

    def __init__(self, db: str, reactor: InlineReactor, archive: TagArchive) -> None:
        self.db, self.reactor, self.archive = db, reactor, archive
        self.start()

    def start(self) -> None:
        self.tags: TagStore = open_store(self.db, self.reactor)
        self.loop = TagWriteBack(self.tags, self.archive, clock=self.reactor, backoff_min=1.0, backoff_max=4.0)

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stopService()
        self.tags.stopService()

    def pending(self) -> list[Any]:
        return result_of(self.tags.pending_writebacks())


@pytest.fixture
def node(db: str, reactor: InlineReactor, archive: TagArchive) -> Any:
    n = Node(db, reactor, archive)
    yield n
    n.stop()


LINK = "r:v1"  # the name the backend's docker_tag pather turns into .../r/_manifests/tags/v1/current/link


def test_pending_survives_a_restart_and_is_written_back(node: Node, memory: MemoryBackend) -> None:
    result_of(node.tags.put_tag("r", "v1", D1, pending=Pending()))
    assert [p[:4] for p in node.pending()] == [("r", "v1", True, 0)]
    node.stop()  # the loop never ran: a crash right after the PUT
    node.start()
    assert [p[:2] for p in node.pending()] == [("r", "v1")]
    node.loop.startService()
    assert memory.blobs == {LINK: str(D1).encode()}
    assert node.pending() == []
    assert node.loop.stats.uploaded == 1


def test_retries_with_backoff_until_the_backend_answers(node: Node, memory: MemoryBackend) -> None:
    memory.failures = 3
    node.loop.startService()
    with capturedLogs() as events:
        result_of(node.tags.put_tag("r", "v1", D1, pending=Pending()))
        node.loop.kick()
    [(_, _, _, attempts, due, error)] = node.pending()
    assert attempts == 1 and due == 1001.0 and "storage is down" in (error or "")
    warnings = [e for e in events if "retrying" in e["log_format"]]
    assert warnings and warnings[0]["namespace"] == "r" and warnings[0]["delay"] == 1.0
    node.reactor.advance(1.0)  # attempt 2 fails: next in 2s
    assert node.pending()[0][3:5] == (2, 1003.0)
    node.reactor.advance(1.9)
    assert node.pending()[0][3] == 2  # not yet due
    node.reactor.advance(0.1)  # attempt 3 fails: next in 4s (backoff_max)
    assert node.pending()[0][3:5] == (3, 1007.0)
    assert memory.blobs == {}
    node.reactor.advance(4.0)
    assert memory.blobs == {LINK: str(D1).encode()}
    assert node.pending() == []
    assert node.loop.stats.failures == 3
    assert [c for c in node.reactor.getDelayedCalls() if c.active()] == []


def test_backoff_survives_a_restart(node: Node, memory: MemoryBackend) -> None:
    memory.failures = 1
    node.loop.startService()
    result_of(node.tags.put_tag("r", "v1", D1, pending=Pending()))
    node.loop.kick()
    assert node.pending()[0][3:5] == (1, 1001.0)
    node.stop()
    node.start()
    node.loop.startService()
    assert memory.blobs == {}  # still waiting out its backoff
    node.reactor.advance(1.0)
    assert memory.blobs == {LINK: str(D1).encode()}


def test_accepted_tag_replaces_the_backend_value(node: Node, memory: MemoryBackend) -> None:
    memory.blobs[LINK] = str(D2).encode()
    node.loop.startService()
    result_of(node.tags.put_tag("r", "v1", D1, pending=Pending(overwrite=True)))
    node.loop.kick()
    assert memory.blobs[LINK] == str(D1).encode()


def test_duplicate_leaves_a_tag_the_backend_has_alone_and_waits_its_delay(node: Node, memory: MemoryBackend) -> None:
    memory.blobs["r:old"] = str(D2).encode()
    node.loop.startService()
    result_of(node.tags.put_tag("r", "old", D1, pending=Pending(overwrite=False, delay=60.0)))
    result_of(node.tags.put_tag("r", "new", D1, pending=Pending(overwrite=False, delay=60.0)))
    node.loop.kick()
    assert len(node.pending()) == 2 and memory.calls == []
    node.reactor.advance(60.0)
    assert memory.blobs == {"r:old": str(D2).encode(), "r:new": str(D1).encode()}
    assert node.pending() == []
    assert (node.loop.stats.uploaded, node.loop.stats.existed) == (1, 1)


def test_duplicate_after_a_local_put_keeps_overwrite_and_the_earlier_time(node: Node) -> None:
    result_of(node.tags.put_tag("r", "v1", D1, pending=Pending(overwrite=True)))
    result_of(node.tags.put_tag("r", "v1", D2, pending=Pending(overwrite=False, delay=60.0)))
    [(repo, tag, overwrite, attempts, due, _)] = node.pending()
    assert (repo, tag, overwrite, attempts, due) == ("r", "v1", True, 0, 1000.0)


def test_read_only_or_missing_backend_drops_the_task_with_one_line(
    db: str, reactor: InlineReactor, scratch: str
) -> None:
    only_upstream = tag_archive(scratch, ("upstream/.*", "registry", FakeRegistryBackend()))
    node = Node(db, reactor, only_upstream)
    try:
        result_of(node.tags.put_tag("upstream/app", "v1", D1, pending=Pending()))
        result_of(node.tags.put_tag("other", "v1", D1, pending=Pending()))
        with capturedLogs() as events:
            node.loop.startService()
        dropped = [e for e in events if "dropped" in e["log_format"]]
        reasons = sorted(e["reason"] for e in dropped)
        assert reasons == ["no backend for the namespace", "the registry backend is read-only"]
        assert node.pending() == []
        assert result_of(node.tags.get_tag("upstream/app", "v1")) == D1  # the tag itself stays
    finally:
        node.stop()


def test_tag_moved_during_an_upload_is_written_again(node: Node, memory: MemoryBackend) -> None:
    memory.hold = Deferred()
    node.loop.startService()
    result_of(node.tags.put_tag("r", "v1", D1, pending=Pending()))
    node.loop.kick()
    assert memory.calls[-1] == ("upload", LINK)  # in flight, holding D1's link file
    result_of(node.tags.put_tag("r", "v1", D2, pending=Pending()))
    node.loop.kick()
    hold, memory.hold = memory.hold, None
    hold.callback(None)
    assert memory.blobs[LINK] == str(D2).encode()
    assert node.pending() == []


def test_stop_cancels_an_upload_and_keeps_its_task(node: Node, memory: MemoryBackend) -> None:
    memory.hold = Deferred()
    node.loop.startService()
    result_of(node.tags.put_tag("r", "v1", D1, pending=Pending()))
    node.loop.kick()
    stopped: list[Any] = []
    node.loop.stopService().addBoth(stopped.append)
    assert stopped and memory.blobs == {}
    assert [p[:2] for p in node.pending()] == [("r", "v1")]


def test_when_idle_fires_once_nothing_is_due(node: Node, memory: MemoryBackend) -> None:
    node.loop.startService()
    result_of(node.tags.put_tag("r", "v1", D1, pending=Pending(delay=30.0)))
    assert result_of(node.loop.when_idle()) is None  # the delayed task is not due
    assert memory.calls == []


def test_version_1_database_is_upgraded_in_place(db: str, reactor: InlineReactor) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE tags (repo TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL, updated REAL NOT NULL,"
            " PRIMARY KEY (repo, tag)) WITHOUT ROWID"
        )
        conn.execute(
            "CREATE TABLE manifests (repo TEXT NOT NULL, digest TEXT NOT NULL, record TEXT NOT NULL, subject TEXT,"
            " artifact_type TEXT, PRIMARY KEY (repo, digest)) WITHOUT ROWID"
        )
        conn.execute("INSERT INTO tags VALUES ('r', 'old', ?, 1.0)", (str(D1),))
        conn.execute("PRAGMA user_version=1")
    store = open_store(db, reactor)
    try:
        assert result_of(store.get_tag("r", "old")) == D1
        result_of(store.put_tag("r", "new", D2, pending=Pending()))
        assert [p[:2] for p in result_of(store.pending_writebacks())] == [("r", "new")]
    finally:
        store.stopService()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (3,)


def test_the_backlog_gives_the_depth_and_the_oldest_tasks_age(node: Node, memory: MemoryBackend) -> None:
    assert result_of(node.loop.backlog()) == (0, 0.0)
    memory.failures = 10
    node.loop.startService()
    result_of(node.tags.put_tag("r", "v1", D1, pending=Pending()))
    node.reactor.advance(30.0)
    result_of(node.tags.put_tag("r", "v2", D2, pending=Pending()))
    assert result_of(node.loop.backlog()) == (2, 30.0)
