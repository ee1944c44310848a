"""Durable write-back of tags to their namespace's backend.

Kraken's build-index with ``write_through: false``: a tag the build-index
accepts is stored in its database and, in the same transaction, queued in
``tag_writeback`` (``TagStore.put_tag(..., pending=...)``). This loop, on the
injected clock, takes the tasks that are due, at most ``concurrency`` at a
time, and for each one

- finds the repository's tag backend; none, or a read-only one
  (``registry``, ``http``): the task is dropped with one log line;
- reads the backend's current value of the tag: equal to the tag's digest
  here, the task is done; different and the task came from a duplicate
  (``overwrite`` false), the backend's value is left alone and the task is
  done (another node wrote it, as Kraken's no-op "already in backend");
- otherwise uploads the link file ``sha256:<hex>``.

Success deletes the task (unless the tag moved meanwhile: then the newer
task stays and runs). A failure is recorded (``attempts``, ``last_error``)
and the task is tried again after ``backoff_min`` doubling per failure up to
``backoff_max``. Tasks survive restarts and keep their due time. Nothing
here runs during a client's PUT: a backend outage never fails a push.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from kraken.backends import BackendError
from kraken.buildindex.backends import TagBackends
from kraken.buildindex.tags import TagStore, WriteBackTask


@attrs.define
class TagWriteBackStats:
    """Counters since the loop started."""

    uploaded: int = 0  # tags written to a backend
    existed: int = 0  # the backend already had the tag (or kept its own value for a duplicate)
    failures: int = 0  # failed tries (each tried again later)
    dropped: int = 0  # tasks dropped: no writable backend, or the tag is gone


class TagWriteBack(Service):
    """The write-back loop over the tag store's ``tag_writeback`` table.
    Start it after the tag store; stopping it cancels uploads in flight
    (their tasks stay and run at the next start)."""

    log = Logger()

    def __init__(
        self,
        tags: TagStore,
        backends: TagBackends,
        *,
        clock: IReactorTime,
        concurrency: int = 4,
        backoff_min: float = 1.0,
        backoff_max: float = 300.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if not 0 < backoff_min <= backoff_max:
            raise ValueError(f"need 0 < backoff_min <= backoff_max, not {backoff_min}, {backoff_max}")
        self.setName("writeback")
        self._tags = tags
        self._backends = backends
        self._clock = clock
        self._concurrency = concurrency
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self.stats = TagWriteBackStats()
        self._in_flight: dict[tuple[str, str], Deferred[None]] = {}
        self._timer: IDelayedCall | None = None
        self._scanning = False
        self._rescan = False
        self._stopping = False
        self._idle_waiters: list[Deferred[None]] = []

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.kick()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stopping = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._fire_idle()
        running = list(self._in_flight.values())
        for d in running:
            d.cancel()
        return DeferredList(running, consumeErrors=True)

    def backoff(self, attempts: int) -> float:
        """The wait before the next try after ``attempts`` failed ones."""
        return float(min(self._backoff_max, self._backoff_min * 2 ** max(0, attempts - 1)))

    def when_idle(self) -> Deferred[None]:
        """Fires once no upload runs and no task is due (tasks waiting for
        their time may remain), or when the loop stops."""
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        if self._stopping or not self.running:
            self._fire_idle()
        else:
            self.kick()
        return d

    def _fire_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for d in waiters:
            d.callback(None)

    # -- the loop ----------------------------------------------------------

    def kick(self) -> None:
        """Look for due tasks now (after a tag was queued, or on the timer)."""
        if not self.running or self._stopping:
            return
        if self._scanning:
            self._rescan = True
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._scanning = True
        Deferred.fromCoroutine(self._scan()).addErrback(self._scan_failed)

    def _scan_failed(self, failure: Failure) -> None:
        self._scanning = False
        self.log.failure("tag write-back scan failed; trying again in {delay}s", failure, delay=self._backoff_max)
        self._schedule(self._backoff_max)

    def _schedule(self, delay: float) -> None:
        if not self.running or self._stopping:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self._clock.seconds() + delay:
                return
            self._timer.cancel()
        self._timer = self._clock.callLater(max(0.0, delay), self.kick)

    async def _scan(self) -> None:
        self._rescan = False
        now = self._clock.seconds()
        free = self._concurrency - len(self._in_flight)
        due: list[WriteBackTask] = []
        following: float | None = None
        if free > 0:
            tasks, following = await self._tags.due_writebacks(now, free + len(self._in_flight))
            due = [t for t in tasks if (t.repo, t.tag) not in self._in_flight][:free]
        if self._stopping:
            self._scanning = False
            return
        for task in due:
            key = (task.repo, task.tag)
            d = Deferred.fromCoroutine(self._run(task))
            if not d.called:
                self._in_flight[key] = d
            d.addBoth(self._finished, key)
        self._scanning = False
        if self._rescan:
            self.kick()
            return
        if not due and not self._in_flight:
            self._fire_idle()
        if following is not None:
            self._schedule(following - now)

    def _finished(self, result: object, key: tuple[str, str]) -> None:
        self._in_flight.pop(key, None)
        if isinstance(result, Failure) and not result.check(CancelledError):
            self.log.failure("tag write-back of {namespace}:{tag} failed", result, namespace=key[0], tag=key[1])
        self.kick()

    async def _run(self, task: WriteBackTask) -> None:
        backend = self._backends.for_repo(task.repo)
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

    async def _failed(self, task: WriteBackTask, error: Exception, failure: Failure) -> None:
        attempts = task.attempts + 1
        delay = self.backoff(attempts)
        self.stats.failures += 1
        text = f"{type(error).__name__}: {error}"
        fields: dict[str, Any] = dict(namespace=task.repo, tag=task.tag, attempts=attempts, delay=delay, error=text)
        if isinstance(error, BackendError):
            self.log.warn(
                "tag write-back of {namespace}:{tag} failed (attempt {attempts}), retrying in {delay}s: {error}",
                **fields,
            )
        else:
            self.log.failure(
                "tag write-back of {namespace}:{tag} failed (attempt {attempts}), retrying in {delay}s",
                failure,
                **fields,
            )
        if self._stopping:
            return
        await self._tags.writeback_failed(task, self._clock.seconds() + delay, text)
        self._schedule(delay)
