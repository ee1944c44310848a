"""The durable task queue: tasks kept in a database table (SQLite, ``kraken.sqlite``), run when due,
retried with exponential backoff after a failure, until each is done.

``TaskQueue`` is the machinery both write-back queues share (the origin's
blobs, ``kraken.origin.writeback``; the build-index's tags,
``kraken.buildindex.writeback``). A subclass says where its tasks live and
what running one means; the loop decides when, and how many at once.

On the injected clock the loop scans for tasks that are due, at most
``concurrency`` running at a time (a task already running is never started
twice), and starts each one. A scan runs when something kicks it (a task
was added, a task finished, the loop started) or when the timer set for the
next due time fires; a kick during a scan makes it scan again when it ends.
A scan that itself fails is logged and tried again after ``backoff_max``.

A task's failure (``_failed``) is logged (without a traceback for the
``expected_errors``, the remote side saying no; with it otherwise), counted,
and recorded by the subclass with its next due time: ``backoff_min``
doubling per failed attempt up to ``backoff_max``. Stopping cancels the tasks
in flight; their rows stay, so they run again at the next start.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from kraken.config import Duration, positive


def check_backoff(instance: TaskQueueConfig, attribute: object, value: float) -> None:
    """attrs validator of ``backoff_max``: not below ``backoff_min``."""
    if instance.backoff_max < instance.backoff_min:
        raise ValueError(
            f"backoff_max ({instance.backoff_max}s) must not be below backoff_min ({instance.backoff_min}s)"
        )


@attrs.frozen
class TaskQueueConfig:
    """The keys every retry loop's configuration section has; a component's
    section subclasses it and adds its own."""

    # Tasks running at once.
    concurrency: int = attrs.field(default=4, validator=positive)
    # A failed task is tried again after backoff_min, doubling per failure up to backoff_max.
    backoff_min: Duration = attrs.field(default=Duration(1.0), validator=positive)
    backoff_max: Duration = attrs.field(default=Duration(300.0), validator=[positive, check_backoff])


class RetryTask(Protocol):
    """What the loop reads of a task: how many times it failed so far."""

    @property
    def attempts(self) -> int: ...


class FailureCounts(Protocol):
    """The subclass's counters; the loop adds to ``failures``."""

    failures: int


T = TypeVar("T", bound=RetryTask)
K = TypeVar("K", bound=Hashable)


class TaskQueue(Service, Generic[T, K]):
    """The scan, start, retry loop over a subclass's durable tasks. A
    ``Service``: starting it runs ``_start`` (by default, a scan); stopping
    it cancels the tasks in flight and fires ``when_idle`` waiters.

    A subclass provides

    - ``_due(now, limit)``: up to ``limit`` tasks due at ``now`` (oldest
      due first) and the next due time after ``now`` (None: no other task);
    - ``_key(task)``: what identifies a task (one runs at a time per key);
    - ``_run(task)``: runs it; the subclass deletes it when done, and on an
      error calls ``await self._failed(task, error, Failure())``;
    - ``_record_failure(task, attempts, next_attempt, error)``: stores the
      failure so that the task is due again at ``next_attempt``;
    - ``_describe(task)``: a log format naming the task and its fields;
    - ``what``, the loop's name in log lines, and ``expected_errors``.
    """

    log = Logger()

    #: The loop's name in log lines ("write-back").
    what: ClassVar[str] = "retry"
    #: Errors logged without their traceback (the remote side refusing, not a bug).
    expected_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    #: Longest error text logged and recorded (None: all of it).
    max_error: ClassVar[int | None] = None

    def __init__(
        self,
        clock: IReactorTime,
        counts: FailureCounts,
        concurrency: int = 4,
        backoff_min: float = 1.0,
        backoff_max: float = 300.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if not 0 < backoff_min <= backoff_max:
            raise ValueError(f"need 0 < backoff_min <= backoff_max, not {backoff_min}, {backoff_max}")
        self._clock = clock
        self._counts = counts
        self._concurrency = concurrency
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._in_flight: dict[K, Deferred[None]] = {}
        self._timer: IDelayedCall | None = None
        self._scanning = False
        self._rescan = False
        self._stopping = False
        self._idle_waiters: list[Deferred[None]] = []

    # -- what a subclass provides -----------------------------------------

    async def _due(self, now: float, limit: int) -> tuple[list[T], float | None]:
        raise NotImplementedError

    def _key(self, task: T) -> K:
        raise NotImplementedError

    async def _run(self, task: T) -> None:
        raise NotImplementedError

    async def _record_failure(self, task: T, attempts: int, next_attempt: float, error: str) -> None:
        raise NotImplementedError

    def _describe(self, task: T) -> tuple[str, dict[str, Any]]:
        """``("write-back of {digest}", {"digest": ...})``: how log lines name ``task``."""
        raise NotImplementedError

    def _start(self) -> None:
        """What starting does once the service runs: look for due tasks."""
        self.kick()

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._start()

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
        """Fires once no task runs and none is due (tasks waiting out a
        backoff may remain), or at once when the loop is stopped or not
        started."""
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
        """Look for due tasks now (a scan in progress scans again after)."""
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
        self.log.failure(
            "{what} scan failed; trying again in {delay}s", failure, what=self.what, delay=self._backoff_max
        )
        self._schedule(self._backoff_max)

    def _schedule(self, delay: float) -> None:
        """Scan after ``delay`` seconds, unless a scan is due sooner."""
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
        busy = set(self._in_flight)
        due: list[T] = []
        following: float | None = None
        if free > 0:
            # Ask for the running ones too: they may be among the first due, and are skipped
            # (also when one finishes meanwhile: its row may still have been read).
            tasks, following = await self._due(now, free + len(busy))
            due = [t for t in tasks if self._key(t) not in busy][:free]
        if self._stopping:
            self._scanning = False
            return
        # Still "scanning" while starting them: a task that finishes at once
        # asks for a rescan instead of scanning beside this loop.
        for task in due:
            key = self._key(task)
            d = Deferred.fromCoroutine(self._run(task))
            if not d.called:
                self._in_flight[key] = d
            d.addBoth(self._finished, task, key)
        self._scanning = False
        if self._rescan:
            self.kick()
            return
        if not due and not self._in_flight:
            self._fire_idle()
        if following is not None:
            # Finished tasks kick a scan themselves; the timer covers tasks in backoff.
            self._schedule(following - now)

    def _finished(self, result: object, task: T, key: K) -> None:
        self._in_flight.pop(key, None)
        if isinstance(result, Failure) and not result.check(CancelledError):
            name, fields = self._describe(task)
            self.log.failure(f"{name} failed", result, **fields)
        self.kick()

    async def _failed(self, task: T, error: Exception, failure: Failure) -> None:
        """Log and count a failed attempt at ``task`` and have it recorded,
        due again after its backoff (not while stopping: the pool may be
        closing, and the task runs again at the next start anyway)."""
        attempts = task.attempts + 1
        delay = self.backoff(attempts)
        self._counts.failures += 1
        text = f"{type(error).__name__}: {error}"[: self.max_error]
        name, fields = self._describe(task)
        fields.update(attempts=attempts, delay=delay, error=text)
        message = f"{name} failed (attempt {{attempts}}), retrying in {{delay}}s"
        if isinstance(error, self.expected_errors):
            self.log.warn(message + ": {error}", **fields)
        else:  # not the remote side saying no: keep the traceback
            self.log.failure(message, failure, **fields)
        if self._stopping:
            return
        await self._record_failure(task, attempts, self._clock.seconds() + delay, text)
        self._schedule(delay)
