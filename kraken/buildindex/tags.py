"""The build-index's durable state: tags and manifest records, in SQLite.

Every query runs in the ``adbapi.ConnectionPool``'s single worker thread, so
the reactor thread never touches the database. The pool holds one connection
(``cp_max=1``): SQLite allows one writer anyway, and a single connection means
the worker sees its own writes in order.

The connection is opened in autocommit mode (``isolation_level=None``) and
every interaction begins its own transaction: ``BEGIN IMMEDIATE`` for writes,
so a read-modify-write is atomic, and ``BEGIN`` for reads that take more than
one statement, so they see one snapshot. ``adbapi`` commits when the
interaction returns and rolls back when it raises.

Schema (version 3, kept in ``PRAGMA user_version``)::

    tags(repo, tag, digest, updated, PRIMARY KEY (repo, tag))
    manifests(repo, digest, record, subject, artifact_type, PRIMARY KEY (repo, digest))
    INDEX manifests_by_subject ON manifests(repo, subject)
    tag_writeback(repo, tag, overwrite, created, attempts, next_attempt, last_error, seq,
                  PRIMARY KEY (repo, tag))
    INDEX tag_writeback_due ON tag_writeback(next_attempt)
    tag_outbox(...)      copies of tags for other nodes and clusters (kraken.buildindex.outbox)

Version 2 added ``tag_writeback``, version 3 ``tag_outbox``: an older
database is upgraded in place when opened. A row there is a tag waiting to be written to its backend
(``kraken.buildindex.writeback``); it is inserted in the same transaction as
the tag itself, so an accepted tag is never lost to a crash before its
write-back. The task names no digest: the write-back stores whatever the
tag points at when it runs. ``seq`` grows with every update of the task, so
a write-back that finishes after the tag moved again does not delete the
newer task. ``overwrite`` is 1 for a tag this node accepted from a client
(replace what the backend holds) and 0 for a duplicate from another node
(write only if the backend has no such tag).

``record`` is ``ManifestRecord.to_json()`` as JSON text; ``subject`` and
``artifact_type`` are copied out of it for the referrers query. Listings sort
byte-wise (``COLLATE BINARY``; names and tags are ASCII), ``last`` is
exclusive, and ``more`` is found by asking for one row beyond the page.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kraken import sqlite
from kraken.buildindex import outbox
from kraken.buildindex.outbox import Copy, Outbox
from kraken.core import Digest
from kraken.registry.source import ManifestRecord, Page

SCHEMA_VERSION = 3

_TABLES = """
CREATE TABLE IF NOT EXISTS tags (
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (repo, tag)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS manifests (
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    record TEXT NOT NULL,
    subject TEXT,
    artifact_type TEXT,
    PRIMARY KEY (repo, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS manifests_by_subject ON manifests (repo, subject);
CREATE TABLE IF NOT EXISTS tag_writeback (
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    overwrite INTEGER NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT,
    seq INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (repo, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tag_writeback_due ON tag_writeback (next_attempt);
"""
_SCHEMA = _TABLES + outbox.SCHEMA

# Longest error text kept in tag_writeback.last_error.
_MAX_ERROR = 500


@attrs.frozen
class Pending:
    """How a stored tag is queued for write-back: ``overwrite`` for a tag
    accepted from a client, not for a duplicate; due after ``delay`` seconds."""

    overwrite: bool = True
    delay: float = 0.0


@attrs.frozen
class WriteBackTask:
    """A due write-back: the tag, what it points at now, and the task's state."""

    repo: str
    tag: str
    digest: Digest | None  # None if the tag row is gone
    overwrite: bool
    attempts: int
    seq: int


def open_pool(path: str, reactor: Any) -> adbapi.ConnectionPool:
    """The connection pool ``TagStore`` expects: one connection to ``path``,
    in autocommit mode, prepared by ``kraken.sqlite``."""
    return sqlite.open_pool(path, reactor, schema=_SCHEMA, version=SCHEMA_VERSION, what="tag database")


def _record_json(record: ManifestRecord) -> str:
    return json.dumps(record.to_json(), sort_keys=True, separators=(",", ":"))


class TagStore(Service):
    """Tags and manifest records of every repository. A ``Service``: starting
    it starts the pool's thread (and opens the database); stopping it closes
    the pool."""

    log = Logger()

    def __init__(self, pool: adbapi.ConnectionPool, *, clock: IReactorTime, max_page: int = 1000) -> None:
        self.setName("tags")
        self._pool = pool
        self._clock = clock
        self._max_page = max_page

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._pool.start()
        # Open the database now, so a bad path or a newer schema shows in the
        # log at startup rather than on the first request.
        d = self._pool.runInteraction(lambda txn: None)
        d.addCallbacks(
            lambda _: self.log.info("tag database {path} open", path=self._path()),
            lambda f: self.log.failure("cannot open tag database {path}", f, path=self._path()),
        )

    def stopService(self) -> None:
        super().stopService()
        self._pool.close()

    def _path(self) -> str:
        return str(self._pool.connargs[0]) if self._pool.connargs else "?"

    def _limit(self, n: int | None) -> int:
        if n is None:
            return self._max_page
        return max(0, min(n, self._max_page))

    # -- tags --------------------------------------------------------------

    async def put_tag(
        self,
        repo: str,
        tag: str,
        digest: Digest,
        *,
        pending: Pending | None = None,
        copies: Sequence[Copy] = (),
        source: str | None = None,
    ) -> Digest | None:
        """Point ``repo:tag`` at ``digest``; returns the digest it pointed at
        before (None if the tag is new). With ``pending``, the tag is queued
        for write-back in the same transaction: a new task, or the existing
        one updated (overwrite if either asks for it, due at the earlier time,
        its failures forgotten). ``copies`` are queued in the outbox in the
        same transaction too (``outbox.queue_copies``: the latest digest wins),
        and its ``source`` marked (``outbox.mark_source``)."""
        now = self._clock.seconds()

        def put(txn: adbapi.Transaction) -> str | None:
            txn.execute("BEGIN IMMEDIATE")
            txn.execute("SELECT digest FROM tags WHERE repo = ? AND tag = ?", (repo, tag))
            row = txn.fetchone()
            txn.execute(
                "INSERT INTO tags (repo, tag, digest, updated) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (repo, tag) DO UPDATE SET digest = excluded.digest, updated = excluded.updated",
                (repo, tag, str(digest), now),
            )
            if pending is not None:
                txn.execute(
                    "INSERT INTO tag_writeback (repo, tag, overwrite, created, attempts, next_attempt, last_error, seq)"
                    " VALUES (?, ?, ?, ?, 0, ?, NULL, 1) ON CONFLICT (repo, tag) DO UPDATE SET"
                    " overwrite = MAX(overwrite, excluded.overwrite), attempts = 0, last_error = NULL,"
                    " next_attempt = MIN(next_attempt, excluded.next_attempt), seq = seq + 1",
                    (repo, tag, int(pending.overwrite), now, now + pending.delay),
                )
            outbox.queue_copies(txn, repo, tag, digest, copies, now)
            outbox.mark_source(txn, repo, tag, source, now)
            return None if row is None else row[0]

        previous = await self._pool.runInteraction(put)
        return None if previous is None else Digest.parse(previous)

    def outbox(self, kind: str) -> Outbox:
        """The queued copies of one kind (``outbox.NODE``, ``outbox.REMOTE``)."""
        return Outbox(self._pool, kind)

    async def healthy(self) -> bool:
        """Whether the database answers a query."""
        try:
            await self._pool.runQuery("SELECT 1")
        except Exception:
            return False
        return True

    async def get_tag(self, repo: str, tag: str) -> Digest | None:
        rows = await self._pool.runQuery("SELECT digest FROM tags WHERE repo = ? AND tag = ?", (repo, tag))
        return Digest.parse(rows[0][0]) if rows else None

    async def list_tags(self, repo: str, n: int | None, last: str | None) -> Page | None:
        """Tags of ``repo`` after ``last``, at most ``n``; None if the
        repository has neither tags nor manifests."""
        limit = self._limit(n)

        def query(txn: adbapi.Transaction) -> Page | None:
            txn.execute("BEGIN")
            txn.execute(
                "SELECT tag FROM tags WHERE repo = ? AND tag > ? ORDER BY tag COLLATE BINARY LIMIT ?",
                (repo, last or "", limit + 1),
            )
            found = [r[0] for r in txn.fetchall()]
            if not found:
                txn.execute(
                    "SELECT 1 FROM tags WHERE repo = ? UNION ALL SELECT 1 FROM manifests WHERE repo = ? LIMIT 1",
                    (repo, repo),
                )
                if txn.fetchone() is None:
                    return None
            return Page(tuple(found[:limit]), len(found) > limit)

        result: Page | None = await self._pool.runInteraction(query)
        return result

    async def list_repositories(self, n: int | None, last: str | None) -> Page:
        """Repositories that have tags or manifests, after ``last``, at most ``n``."""
        limit = self._limit(n)
        after = last or ""
        rows = await self._pool.runQuery(
            "SELECT repo FROM tags WHERE repo > ? UNION SELECT repo FROM manifests WHERE repo > ?"
            " ORDER BY repo COLLATE BINARY LIMIT ?",
            (after, after, limit + 1),
        )
        found = [r[0] for r in rows]
        return Page(tuple(found[:limit]), len(found) > limit)

    # -- manifest records --------------------------------------------------

    async def put_manifest(self, repo: str, record: ManifestRecord) -> None:
        await self._pool.runOperation(
            "INSERT INTO manifests (repo, digest, record, subject, artifact_type) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (repo, digest) DO UPDATE SET record = excluded.record, subject = excluded.subject,"
            " artifact_type = excluded.artifact_type",
            (
                repo,
                str(record.digest),
                _record_json(record),
                None if record.subject is None else str(record.subject),
                record.artifact_type,
            ),
        )

    async def get_manifest(self, repo: str, digest: Digest) -> ManifestRecord | None:
        rows = await self._pool.runQuery(
            "SELECT record FROM manifests WHERE repo = ? AND digest = ?", (repo, str(digest))
        )
        return ManifestRecord.from_json(json.loads(rows[0][0])) if rows else None

    async def referrers(self, repo: str, subject: Digest) -> list[ManifestRecord]:
        """Manifests of ``repo`` whose subject is ``subject``, by digest."""
        rows = await self._pool.runQuery(
            "SELECT record FROM manifests WHERE repo = ? AND subject = ? ORDER BY digest COLLATE BINARY",
            (repo, str(subject)),
        )
        return [ManifestRecord.from_json(json.loads(r[0])) for r in rows]

    # -- pending write-backs -----------------------------------------------

    async def due_writebacks(self, now: float, limit: int) -> tuple[list[WriteBackTask], float | None]:
        """At most ``limit`` tasks due at ``now`` (earliest first), and when
        the next task that is not yet due will be (None if there is none)."""

        def query(txn: adbapi.Transaction) -> tuple[list[WriteBackTask], float | None]:
            txn.execute("BEGIN")
            txn.execute(
                "SELECT w.repo, w.tag, t.digest, w.overwrite, w.attempts, w.seq FROM tag_writeback AS w"
                " LEFT JOIN tags AS t ON t.repo = w.repo AND t.tag = w.tag"
                " WHERE w.next_attempt <= ? ORDER BY w.next_attempt, w.created LIMIT ?",
                (now, limit),
            )
            tasks = [
                WriteBackTask(
                    r[0], r[1], None if r[2] is None else Digest.parse(r[2]), bool(r[3]), int(r[4]), int(r[5])
                )
                for r in txn.fetchall()
            ]
            txn.execute("SELECT MIN(next_attempt) FROM tag_writeback WHERE next_attempt > ?", (now,))
            (following,) = txn.fetchone()
            return tasks, following

        result: tuple[list[WriteBackTask], float | None] = await self._pool.runInteraction(query)
        return result

    async def writeback_done(self, task: WriteBackTask) -> bool:
        """Delete the task unless it changed since ``task`` was read; whether it was deleted."""

        def delete(txn: adbapi.Transaction) -> bool:
            txn.execute(
                "DELETE FROM tag_writeback WHERE repo = ? AND tag = ? AND seq = ?", (task.repo, task.tag, task.seq)
            )
            return bool(txn.rowcount)

        done: bool = await self._pool.runInteraction(delete)
        return done

    async def writeback_failed(self, task: WriteBackTask, next_attempt: float, error: str) -> None:
        """Record a failed try (unless the task changed meanwhile: the new version is due anyway)."""
        await self._pool.runOperation(
            "UPDATE tag_writeback SET attempts = ?, next_attempt = ?, last_error = ?"
            " WHERE repo = ? AND tag = ? AND seq = ?",
            (task.attempts + 1, next_attempt, error[:_MAX_ERROR], task.repo, task.tag, task.seq),
        )

    async def writeback_backlog(self) -> tuple[int, float | None]:
        """How many tag write-backs wait, and when the oldest was queued (None when none)."""
        [(count, oldest)] = await self._pool.runQuery("SELECT COUNT(*), MIN(created) FROM tag_writeback")
        return int(count), None if oldest is None else float(oldest)

    async def pending_writebacks(self) -> list[tuple[str, str, bool, int, float, str | None]]:
        """Every queued write-back: (repo, tag, overwrite, attempts, next_attempt, last_error), by repo and tag."""
        rows = await self._pool.runQuery(
            "SELECT repo, tag, overwrite, attempts, next_attempt, last_error FROM tag_writeback"
            " ORDER BY repo COLLATE BINARY, tag COLLATE BINARY"
        )
        return [(r[0], r[1], bool(r[2]), int(r[3]), float(r[4]), r[5]) for r in rows]
