"""The outbox: copies of accepted tags waiting to be sent elsewhere, durable in the tag database.

A row of ``tag_outbox`` is one copy of one tag for one destination: ``kind`` ``node`` (another
build-index node of this cluster, ``dest`` its base URL; ``kraken.buildindex.duplicate``) or
``remote`` (another cluster, ``dest`` the remote's name; ``kraken.buildindex.remotes``). Rows are
written by ``queue_copies`` inside the transaction that stores the tag itself
(``TagStore.put_tag(..., copies=...)``), so an accepted tag is never lost to a crash before its
copies are queued, and a restart resumes every copy that was not confirmed.

The queue holds the latest digest per (kind, dest, repo, tag): a tag moved again while its copy
waits replaces the queued digest (and forgets the failures), so a destination ends with the
sender's latest value and never receives an older one after a newer one. ``seq`` grows with every
replacement, so a send that finishes after the tag moved does not delete the newer copy. Every
query runs in the tag store's SQLite pool (its single thread), never in the reactor thread.

Schema (part of the tag database's version 3)::

    tag_outbox(kind, dest, repo, tag, digest, delay, created, attempts, next_attempt,
               last_error, seq, PRIMARY KEY (kind, dest, repo, tag))
    INDEX tag_outbox_due ON tag_outbox(kind, next_attempt)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from twisted.enterprise import adbapi

from kraken.core import Digest

SCHEMA = """
CREATE TABLE IF NOT EXISTS tag_outbox (
    kind TEXT NOT NULL,
    dest TEXT NOT NULL,
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    delay REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT,
    seq INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (kind, dest, repo, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tag_outbox_due ON tag_outbox (kind, next_attempt);
"""

NODE = "node"
REMOTE = "remote"

# Longest error text kept in last_error.
_MAX_ERROR = 500


@attrs.frozen
class Copy:
    """One destination for a tag being stored: ``kind`` and ``dest``; ``delay`` is passed on to the
    receiver (a node's write-back delay), not a wait before sending."""

    kind: str
    dest: str
    delay: float = 0.0


@attrs.frozen
class OutboxTask:
    """A queued copy as read back: where it goes, what it says, and its state."""

    kind: str
    dest: str
    repo: str
    tag: str
    digest: Digest
    delay: float
    attempts: int
    seq: int
    last_error: str | None = None
    next_attempt: float = 0.0


def queue_copies(
    txn: adbapi.Transaction, repo: str, tag: str, digest: Digest, copies: Sequence[Copy], now: float
) -> None:
    """In the caller's transaction: queue ``copies`` of ``repo:tag -> digest``, each replacing a
    queued copy of the same tag for the same destination (latest wins, due now, failures forgotten)."""
    for c in copies:
        txn.execute(
            "INSERT INTO tag_outbox (kind, dest, repo, tag, digest, delay, created, attempts, next_attempt,"
            " last_error, seq) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, NULL, 1)"
            " ON CONFLICT (kind, dest, repo, tag) DO UPDATE SET digest = excluded.digest,"
            " delay = excluded.delay, attempts = 0, next_attempt = excluded.next_attempt, last_error = NULL,"
            " seq = seq + 1",
            (c.kind, c.dest, repo, tag, str(digest), c.delay, now, now),
        )


def _task(row: Sequence[Any]) -> OutboxTask:
    return OutboxTask(
        kind=row[0], dest=row[1], repo=row[2], tag=row[3], digest=Digest.parse(row[4]), delay=float(row[5]),
        attempts=int(row[6]), seq=int(row[7]), last_error=row[8], next_attempt=float(row[9]),
    )  # fmt: skip


_COLUMNS = "kind, dest, repo, tag, digest, delay, attempts, seq, last_error, next_attempt"


class Outbox:
    """The queries of one kind of copy over the tag store's pool."""

    def __init__(self, pool: adbapi.ConnectionPool, kind: str) -> None:
        self._pool = pool
        self.kind = kind

    async def due(self, now: float, limit: int) -> tuple[list[OutboxTask], float | None]:
        """At most ``limit`` copies due at ``now`` (earliest first), and when the next one that is not
        yet due will be (None: there is none)."""

        def query(txn: adbapi.Transaction) -> tuple[list[OutboxTask], float | None]:
            txn.execute("BEGIN")
            txn.execute(
                f"SELECT {_COLUMNS} FROM tag_outbox WHERE kind = ? AND next_attempt <= ?"
                " ORDER BY next_attempt, created LIMIT ?",
                (self.kind, now, limit),
            )
            tasks = [_task(r) for r in txn.fetchall()]
            txn.execute(
                "SELECT MIN(next_attempt) FROM tag_outbox WHERE kind = ? AND next_attempt > ?", (self.kind, now)
            )
            (following,) = txn.fetchone()
            return tasks, following

        result: tuple[list[OutboxTask], float | None] = await self._pool.runInteraction(query)
        return result

    async def done(self, task: OutboxTask) -> bool:
        """Delete the copy unless it changed since ``task`` was read; whether it was deleted."""

        def delete(txn: adbapi.Transaction) -> bool:
            txn.execute(
                "DELETE FROM tag_outbox WHERE kind = ? AND dest = ? AND repo = ? AND tag = ? AND seq = ?",
                (task.kind, task.dest, task.repo, task.tag, task.seq),
            )
            return bool(txn.rowcount)

        deleted: bool = await self._pool.runInteraction(delete)
        return deleted

    async def failed(self, task: OutboxTask, attempts: int, next_attempt: float, error: str) -> None:
        """Record a failed try (unless the copy changed meanwhile: the new version is due anyway)."""
        await self._pool.runOperation(
            "UPDATE tag_outbox SET attempts = ?, next_attempt = ?, last_error = ?"
            " WHERE kind = ? AND dest = ? AND repo = ? AND tag = ? AND seq = ?",
            (attempts, next_attempt, error[:_MAX_ERROR], task.kind, task.dest, task.repo, task.tag, task.seq),
        )

    async def retry_now(self, repo: str, tag: str, now: float) -> int:
        """Make every queued copy of ``repo:tag`` due now; how many there were."""

        def update(txn: adbapi.Transaction) -> int:
            txn.execute(
                "UPDATE tag_outbox SET next_attempt = ? WHERE kind = ? AND repo = ? AND tag = ?",
                (now, self.kind, repo, tag),
            )
            return int(txn.rowcount)

        n: int = await self._pool.runInteraction(update)
        return n

    async def pending(self) -> list[OutboxTask]:
        """Every queued copy of this kind, by destination, repository and tag."""
        rows = await self._pool.runQuery(
            f"SELECT {_COLUMNS} FROM tag_outbox WHERE kind = ?"
            " ORDER BY dest COLLATE BINARY, repo COLLATE BINARY, tag COLLATE BINARY",
            (self.kind,),
        )
        return [_task(r) for r in rows]

    async def depth(self) -> int:
        rows = await self._pool.runQuery("SELECT COUNT(*) FROM tag_outbox WHERE kind = ?", (self.kind,))
        return int(rows[0][0])
