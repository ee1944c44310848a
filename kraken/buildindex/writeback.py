"""Durable write-back of tags to their namespace's backend.

Kraken's build-index with ``write_through: false``: a tag the build-index
accepts is stored in its database and, in the same transaction, queued in
``tag_writeback`` (``TagStore.put_tag(..., pending=...)``). This loop, on the
injected clock, takes the tasks that are due, at most ``concurrency`` at a
time, and for each one

- finds the repository's entry in the tag archive
  (``kraken.buildindex.archive``); none, or a read-only one (``registry``,
  ``http``): the task is dropped with one log line;
- reads the backend's current value of the tag: equal to the tag's digest
  here, the task is done; different and the task came from a duplicate
  (``overwrite`` false), the backend's value is left alone and the task is
  done (another node wrote it, as Kraken's no-op "already in backend");
- otherwise uploads the link file ``sha256:<hex>``.

Success deletes the task (unless the tag moved meanwhile: then the newer
task stays and runs). A failure is recorded (``attempts``, ``last_error``)
and the task is tried again after ``backoff_min`` doubling per failure up to
``backoff_max``. Tasks survive restarts and keep their due time. Nothing
here runs during a client's PUT: a backend outage never fails a push. The
loop itself (scans, concurrency, backoff, stopping) is
``kraken.taskqueue.TaskQueue``; the tasks live in ``TagStore``.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from kraken.backends import BackendError
from kraken.buildindex.archive import TagArchive
from kraken.buildindex.tags import TagStore, WriteBackTask
from kraken.taskqueue import TaskQueue


@attrs.define
class TagWriteBackStats:
    """Counters since the loop started."""

    uploaded: int = 0  # tags written to a backend
    existed: int = 0  # the backend already had the tag (or kept its own value for a duplicate)
    failures: int = 0  # failed tries (each tried again later)
    dropped: int = 0  # tasks dropped: no writable backend, or the tag is gone


class TagWriteBack(TaskQueue[WriteBackTask, tuple[str, str]]):
    """The write-back loop over the tag store's ``tag_writeback`` table.
    Start it after the tag store; stopping it cancels uploads in flight
    (their tasks stay and run at the next start). ``kick()`` after a tag was
    queued."""

    what = "tag write-back"
    expected_errors = (BackendError,)

    def __init__(
        self,
        tags: TagStore,
        archive: TagArchive,
        *,
        clock: IReactorTime,
        concurrency: int = 4,
        backoff_min: float = 1.0,
        backoff_max: float = 300.0,
    ) -> None:
        self.stats = TagWriteBackStats()
        super().__init__(clock, self.stats, concurrency, backoff_min, backoff_max)
        self.setName("writeback")
        self._tags = tags
        self._archive = archive

    async def _due(self, now: float, limit: int) -> tuple[list[WriteBackTask], float | None]:
        return await self._tags.due_writebacks(now, limit)

    async def backlog(self) -> tuple[int, float]:
        """Tasks waiting, and the age of the oldest in seconds (0 when none): for ``/metrics``."""
        count, oldest = await self._tags.writeback_backlog()
        return count, 0.0 if oldest is None else max(0.0, self._clock.seconds() - oldest)

    def _key(self, task: WriteBackTask) -> tuple[str, str]:
        return (task.repo, task.tag)

    def _describe(self, task: WriteBackTask) -> tuple[str, dict[str, Any]]:
        return "tag write-back of {namespace}:{tag}", dict(namespace=task.repo, tag=task.tag)

    async def _record_failure(self, task: WriteBackTask, attempts: int, next_attempt: float, error: str) -> None:
        await self._tags.writeback_failed(task, next_attempt, error)

    async def _run(self, task: WriteBackTask) -> None:
        backend = self._archive.for_repo(task.repo)
        reason = None
        if task.digest is None:
            reason = "the tag is gone"
        elif backend is None:
            reason = "no backend for the namespace"
        elif not backend.writable:
            reason = f"the {backend.kind} backend is read-only"
        if reason is not None or backend is None or task.digest is None:
            self.log.info(
                "tag write-back of {namespace}:{tag} dropped: {reason}",
                namespace=task.repo,
                tag=task.tag,
                reason=reason,
            )
            self.stats.dropped += 1
            await self._tags.writeback_done(task)
            return
        digest = task.digest
        started = self._clock.seconds()
        try:
            current = await backend.get(task.repo, task.tag)
            if current == digest:
                outcome = "already there"
                self.stats.existed += 1
            elif current is not None and not task.overwrite:
                outcome = f"the backend holds {current}, left as it is (duplicate)"
                self.stats.existed += 1
            else:
                await backend.put(task.repo, task.tag, digest)
                outcome = "uploaded"
                self.stats.uploaded += 1
        except CancelledError:
            raise  # stopping: the task stays and runs at the next start
        except Exception as e:
            await self._failed(task, e, Failure())
            return
        self.log.info(
            "tag write-back of {namespace}:{tag} -> {digest}: {outcome} ({duration:.3f}s)",
            namespace=task.repo,
            tag=task.tag,
            digest=str(digest),
            outcome=outcome,
            duration=self._clock.seconds() - started,
        )
        await self._tags.writeback_done(task)
