"""Durable write-back: committed blobs uploaded to their storage backend.

Kraken's ``lib/persistedretry`` with the ``writeback`` executor. A task is
(namespace, digest); tasks live in SQLite, so a blob committed here reaches
its backend even across restarts and while the backend is down.

Every query runs in the ``adbapi.ConnectionPool``'s single worker thread
(``open_pool``: one connection, autocommit, ``BEGIN IMMEDIATE`` where a
statement needs company), so the reactor thread never touches the database.

Schema (version 1, kept in ``PRAGMA user_version``)::

    writeback(namespace, digest, created, attempts, next_attempt, last_error,
              PRIMARY KEY (namespace, digest))

Adding a task that exists is a no-op. The worker loop runs on the injected
clock: it takes the tasks that are due (``next_attempt <= now``), at most
``concurrency`` at a time, and for each one

- asks the router for the namespace's backend (none: the task is dropped,
  with a log line);
- drops the task if the cached blob is gone (someone deleted it by hand);
- ``stat``\\ s the blob on the backend: present means done (never overwrite);
- otherwise uploads the cached file as the blob's hex digest (the name the
  ``sharded_docker_blob`` pather takes).

Success deletes the task. Any failure (``BackendUnavailable`` or anything
else) is recorded in ``attempts`` and ``last_error`` and the task is tried
again after ``backoff_min`` doubling per attempt up to ``backoff_max``. At
start every task that failed before is due at once; a task added with a
``delay`` (a replica's copy) that was never tried keeps it. Errors are
logged and never stop the loop. The loop itself (scans, concurrency,
backoff, stopping) is ``kraken.taskqueue.TaskQueue``; this module holds
the table and what one task does.

``pending(digest)`` answers from memory (a mirror of the table, loaded at
start): a blob waiting for write-back must never be evicted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.enterprise import adbapi
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from kraken import sqlite
from kraken.backends import BackendError, BlobNotFound, NoBackend, Router
from kraken.core import Digest
from kraken.taskqueue import TaskQueue
from kraken.workers import Worker

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS writeback (
    namespace TEXT NOT NULL,
    digest TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT,
    PRIMARY KEY (namespace, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS writeback_due ON writeback (next_attempt);
"""

# Longest error text kept in last_error.
_MAX_ERROR = 500


def open_pool(path: str, reactor: Any) -> adbapi.ConnectionPool:
    """The pool ``WriteBackQueue`` expects: one autocommit connection to
    ``path`` (its directory is created), prepared by ``kraken.sqlite``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return sqlite.open_pool(path, reactor, schema=_SCHEMA, version=SCHEMA_VERSION, what="write-back database")


@attrs.define
class WriteBackStats:
    """Counters since the queue started."""

    queued: int = 0  # tasks added (not counting adds of existing tasks)
    uploaded: int = 0  # blobs uploaded
    existed: int = 0  # blobs the backend already had
    failures: int = 0  # failed attempts (each retried later)
    dropped: int = 0  # tasks dropped: no backend for the namespace
    missing: int = 0  # tasks dropped: the cached blob is gone
    pending: int = 0  # tasks waiting now


@attrs.frozen
class _Task:
    namespace: str
    digest: Digest
    attempts: int


class WriteBackQueue(TaskQueue[_Task, tuple[str, Digest]]):
    """The durable write-back queue and its worker loop. A ``Service``:
    starting it starts the pool, loads the pending tasks and runs them;
    stopping it cancels uploads in flight (they are tried again at the next
    start) and closes the pool."""

    what = "write-back"
    expected_errors = (BackendError,)
    max_error = _MAX_ERROR

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        *,
        router: Router,
        blob_path: Callable[[Digest], str],
        worker: Worker,
        clock: IReactorTime,
        concurrency: int = 4,
        backoff_min: float = 1.0,
        backoff_max: float = 300.0,
    ) -> None:
        """``blob_path`` is where a committed blob's data lives (``CAStore.blob_path``);
        ``worker`` runs the check that it still exists."""
        self._stats = WriteBackStats()
        super().__init__(clock, self._stats, concurrency, backoff_min, backoff_max)
        self.setName("writeback")
        self._pool = pool
        self._router = router
        self._blob_path = blob_path
        self._worker = worker
        # digest -> namespaces with a task (mirror of the table).
        self._tasks: dict[Digest, set[str]] = {}

    # -- lifecycle ---------------------------------------------------------

    def _start(self) -> None:
        self._pool.start()
        Deferred.fromCoroutine(self._load()).addErrback(
            lambda f: self.log.failure("cannot open write-back database {path}", f, path=self._path())
        )

    async def _load(self) -> None:
        now = self._clock.seconds()

        def load(txn: adbapi.Transaction) -> list[tuple[str, str]]:
            txn.execute("BEGIN IMMEDIATE")
            # Every task that failed before is due at start (Kraken marks them failed and retries them);
            # a replica's task never tried keeps its delay.
            txn.execute("UPDATE writeback SET next_attempt = ? WHERE next_attempt > ? AND attempts > 0", (now, now))
            txn.execute("SELECT namespace, digest FROM writeback")
            return [(r[0], r[1]) for r in txn.fetchall()]

        rows = await self._pool.runInteraction(load)
        for namespace, digest in rows:
            self._remember(namespace, Digest.parse(digest))
        self.log.info("write-back database {path} open, {count} tasks pending", path=self._path(), count=len(rows))
        self.kick()

    def stopService(self) -> Deferred[None]:
        def close(_: object) -> None:
            self._pool.close()

        return super().stopService().addCallback(close)

    def _path(self) -> str:
        return str(self._pool.connargs[0]) if self._pool.connargs else "?"

    # -- the API -----------------------------------------------------------

    async def add(self, namespace: str, digest: Digest, delay: float = 0.0) -> None:
        """Queue ``digest`` for write-back to ``namespace``'s backend, durably
        (the task is in the database when this returns), first tried after
        ``delay`` seconds (a replica's copy waits, so that the origin that
        took the upload usually writes it back alone). An existing task is
        left as it is."""
        now = self._clock.seconds()
        due = now + max(0.0, delay)

        def insert(txn: adbapi.Transaction) -> int:
            txn.execute(
                "INSERT INTO writeback (namespace, digest, created, attempts, next_attempt, last_error)"
                " VALUES (?, ?, ?, 0, ?, NULL) ON CONFLICT (namespace, digest) DO NOTHING",
                (namespace, str(digest), now, due),
            )
            return int(txn.rowcount)

        added = await self._pool.runInteraction(insert)
        if added:
            self._stats.queued += 1
            self.log.debug("write-back of {digest} queued", digest=str(digest), namespace=namespace)
        self._remember(namespace, digest)
        self.kick()

    async def backlog(self) -> tuple[int, float]:
        """Tasks waiting, and the age of the oldest in seconds (0 when none), from the table: for ``/metrics``."""
        [(count, oldest)] = await self._pool.runQuery("SELECT COUNT(*), MIN(created) FROM writeback")
        return int(count), 0.0 if oldest is None else max(0.0, self._clock.seconds() - float(oldest))

    def pending(self, digest: Digest) -> bool:
        """Whether ``digest`` waits for write-back (to any namespace's
        backend): such a blob must not be evicted."""
        return digest in self._tasks

    def namespaces(self, digest: Digest) -> list[str]:
        """The namespaces ``digest`` waits for write-back to, sorted (empty: none)."""
        return sorted(self._tasks.get(digest, ()))

    def stats(self) -> WriteBackStats:
        return attrs.evolve(self._stats, pending=sum(len(ns) for ns in self._tasks.values()))

    def _remember(self, namespace: str, digest: Digest) -> None:
        self._tasks.setdefault(digest, set()).add(namespace)

    def _forget(self, namespace: str, digest: Digest) -> None:
        namespaces = self._tasks.get(digest)
        if namespaces is not None:
            namespaces.discard(namespace)
            if not namespaces:
                del self._tasks[digest]

    # -- one task (the loop is TaskQueue's) --------------------------------

    async def _due(self, now: float, limit: int) -> tuple[list[_Task], float | None]:
        def query(txn: adbapi.Transaction) -> tuple[list[tuple[str, str, int]], float | None]:
            txn.execute("BEGIN")
            txn.execute(
                "SELECT namespace, digest, attempts FROM writeback WHERE next_attempt <= ?"
                " ORDER BY next_attempt, created LIMIT ?",
                (now, limit),
            )
            rows = [(r[0], r[1], int(r[2])) for r in txn.fetchall()]
            txn.execute("SELECT MIN(next_attempt) FROM writeback WHERE next_attempt > ?", (now,))
            (nxt,) = txn.fetchone()
            return rows, nxt

        rows, following = await self._pool.runInteraction(query)
        return [_Task(namespace, Digest.parse(text), attempts) for namespace, text, attempts in rows], following

    def _key(self, task: _Task) -> tuple[str, Digest]:
        return (task.namespace, task.digest)

    def _describe(self, task: _Task) -> tuple[str, dict[str, Any]]:
        return "write-back of {digest}", dict(digest=str(task.digest), namespace=task.namespace)

    async def _run(self, task: _Task) -> None:
        namespace, digest = task.namespace, task.digest
        try:
            backend = self._router.backend_for(namespace)
        except NoBackend as e:
            self.log.warn(
                "write-back of {digest} dropped: {error}", digest=str(digest), namespace=namespace, error=str(e)
            )
            self._stats.dropped += 1
            await self._delete(task)
            return
        path = self._blob_path(digest)
        started = self._clock.seconds()
        try:
            if not await self._worker.run(os.path.isfile, path):
                self.log.warn(
                    "write-back of {digest} dropped: the cached blob {path} is gone",
                    digest=str(digest),
                    namespace=namespace,
                    path=path,
                )
                self._stats.missing += 1
                await self._delete(task)
                return
            try:
                await backend.stat(namespace, digest.hex)
            except BlobNotFound:
                await backend.upload(namespace, digest.hex, path)
                outcome = "uploaded"
                self._stats.uploaded += 1
            else:
                outcome = "already there"
                self._stats.existed += 1
        except CancelledError:
            raise  # stopping: the task stays, it runs again at the next start
        except Exception as e:
            await self._failed(task, e, Failure())
            return
        self.log.info(
            "write-back of {digest}: {outcome} ({duration:.3f}s)",
            digest=str(digest),
            namespace=namespace,
            outcome=outcome,
            duration=self._clock.seconds() - started,
        )
        await self._delete(task)

    async def _record_failure(self, task: _Task, attempts: int, next_attempt: float, error: str) -> None:
        await self._pool.runOperation(
            "UPDATE writeback SET attempts = ?, next_attempt = ?, last_error = ? WHERE namespace = ? AND digest = ?",
            (attempts, next_attempt, error, task.namespace, str(task.digest)),
        )

    async def _delete(self, task: _Task) -> None:
        await self._pool.runOperation(
            "DELETE FROM writeback WHERE namespace = ? AND digest = ?", (task.namespace, str(task.digest))
        )
        self._forget(task.namespace, task.digest)
