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
    tag_sources(repo, tag, source, received, PRIMARY KEY (repo, tag))

``tag_sources`` marks the tags whose current value came from a remote cluster (``source`` names it):
written with the tag by ``TagStore.put_tag(..., source=name)``, deleted when a client puts the tag
here (``source=""``); a duplicate from another node leaves it as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import attrs
from twisted.enterprise import adbapi
from twisted.internet.interfaces import IReactorTime

from kraken.core import Digest
from kraken.taskqueue import TaskQueue

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
CREATE TABLE IF NOT EXISTS tag_sources (
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    source TEXT NOT NULL,
    received REAL NOT NULL,
    PRIMARY KEY (repo, tag)
) WITHOUT ROWID;
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


def mark_source(txn: adbapi.Transaction, repo: str, tag: str, source: str | None, now: float) -> None:
    """In the caller's transaction: ``source`` None leaves the mark alone, "" removes it (a client's put),
    a name marks the tag as received from that remote."""
    if source is None:
        return
    if source == "":
        txn.execute("DELETE FROM tag_sources WHERE repo = ? AND tag = ?", (repo, tag))
        return
    txn.execute(
        "INSERT INTO tag_sources (repo, tag, source, received) VALUES (?, ?, ?, ?) ON CONFLICT (repo, tag)"
        " DO UPDATE SET source = excluded.source, received = excluded.received",
        (repo, tag, source, now),
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

    async def source_of(self, repo: str, tag: str) -> str | None:
        """The remote the tag's current value came from (None: put here, or copied from a node)."""
        rows = await self._pool.runQuery("SELECT source FROM tag_sources WHERE repo = ? AND tag = ?", (repo, tag))
        return str(rows[0][0]) if rows else None

    async def summary(self) -> dict[str, tuple[int, float]]:
        """Per destination: copies queued, and when the oldest was first queued (clock seconds)."""
        rows = await self._pool.runQuery(
            "SELECT dest, COUNT(*), MIN(created) FROM tag_outbox WHERE kind = ? GROUP BY dest", (self.kind,)
        )
        return {str(r[0]): (int(r[1]), float(r[2])) for r in rows}

    async def depth(self) -> int:
        rows = await self._pool.runQuery("SELECT COUNT(*) FROM tag_outbox WHERE kind = ?", (self.kind,))
        return int(rows[0][0])


class OutboxCounts(Protocol):
    """The counters an outbox loop adds to."""

    failures: int
    dropped: int


class OutboxQueue(TaskQueue[OutboxTask, tuple[str, str, str]]):
    """What the loops over one kind of copy share (``Duplicator``, ``Replicator``): where the tasks
    live, one running per (dest, repo, tag), the log names, failures recorded in the row, operator
    listing and re-trigger. A subclass sets ``task_name`` (a format naming ``{namespace}``, ``{tag}``
    and the destination as ``dest_field``) and implements ``_run``."""

    task_name: ClassVar[str] = "copy of {namespace}:{tag} to {dest}"
    dest_field: ClassVar[str] = "dest"

    def __init__(
        self,
        outbox: Outbox,
        clock: IReactorTime,
        counts: OutboxCounts,
        concurrency: int,
        backoff_min: float,
        backoff_max: float,
    ) -> None:
        super().__init__(clock, counts, concurrency, backoff_min, backoff_max)
        self._outbox = outbox
        self._outbox_counts = counts

    async def pending(self) -> list[OutboxTask]:
        """Every queued copy of this loop's kind (the operator's listing)."""
        return await self._outbox.pending()

    async def retrigger(self, repo: str, tag: str) -> int:
        """Make every queued copy of ``repo:tag`` due now; how many there were."""
        n = await self._outbox.retry_now(repo, tag, self._clock.seconds())
        self.kick()
        return n

    async def _drop(self, task: OutboxTask, reason: str) -> None:
        """Forget a copy that can never be sent, with one log line."""
        name, fields = self._describe(task)
        self.log.info(name + " dropped: {reason}", reason=reason, **fields)
        self._outbox_counts.dropped += 1
        await self._outbox.done(task)

    async def _due(self, now: float, limit: int) -> tuple[list[OutboxTask], float | None]:
        return await self._outbox.due(now, limit)

    def _key(self, task: OutboxTask) -> tuple[str, str, str]:
        return (task.dest, task.repo, task.tag)

    def _describe(self, task: OutboxTask) -> tuple[str, dict[str, Any]]:
        fields = {"namespace": task.repo, "tag": task.tag, self.dest_field: task.dest, "digest": str(task.digest)}
        return self.task_name, fields

    async def _record_failure(self, task: OutboxTask, attempts: int, next_attempt: float, error: str) -> None:
        await self._outbox.failed(task, attempts, next_attempt, error)
