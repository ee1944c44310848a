"""TaskQueue's scan rules that neither write-back queue's tests reach: a
kick during a scan, a task that finishes while the due query runs, a scan
that fails, ``when_idle`` outside the running state. Tasks live in a dict;
the due query can be held open on a Deferred; time is a ``task.Clock``."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from results import result_of
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from kraken.taskqueue import TaskQueue


@attrs.frozen
class Item:
    name: str
    attempts: int = 0


@attrs.define
class Counts:
    failures: int = 0


class MemoryLoop(TaskQueue[Item, str]):
    """Tasks by name with their due time. ``gate`` set: the due query waits
    on it (its answer is what the table held when it was asked); ``fail_query``:
    the next query raises; ``hold``: runs wait on a Deferred per name
    (``held``); ``errors``: a name's next run fails."""

    what = "memory"

    def __init__(self, clock: Clock, **kwargs: Any) -> None:
        super().__init__(clock, Counts(), **kwargs)
        self.table: dict[str, tuple[float, int]] = {}  # name -> (due, attempts)
        self.runs: list[str] = []
        self.held: dict[str, Deferred[None]] = {}
        self.hold = False
        self.errors: dict[str, Exception] = {}  # name -> the error its next run fails with
        self.gate: Deferred[None] | None = None
        self.fail_query = False

    def put(self, name: str, due: float = 0.0) -> None:
        self.table[name] = (due, 0)

    async def _due(self, now: float, limit: int) -> tuple[list[Item], float | None]:
        if self.fail_query:
            self.fail_query = False
            raise RuntimeError("database gone")
        ready = sorted((due, name) for name, (due, _) in self.table.items() if due <= now)[:limit]
        later = [due for due, _ in self.table.values() if due > now]
        answer = [Item(name, self.table[name][1]) for _, name in ready], min(later, default=None)
        if self.gate is not None:
            await self.gate
        return answer

    def _key(self, task: Item) -> str:
        return task.name

    def _describe(self, task: Item) -> tuple[str, dict[str, Any]]:
        return "memory task {name}", {"name": task.name}

    async def _run(self, task: Item) -> None:
        self.runs.append(task.name)
        if self.hold:
            d: Deferred[None] = Deferred()
            self.held[task.name] = d
            await d
        error = self.errors.pop(task.name, None)
        if error is not None:
            await self._failed(task, error, Failure(error))
            return
        self.table.pop(task.name, None)

    async def _record_failure(self, task: Item, attempts: int, next_attempt: float, error: str) -> None:
        self.table[task.name] = (next_attempt, attempts)


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(1000.0)
    return c


@pytest.fixture
def loop(clock: Clock) -> Any:
    lp = MemoryLoop(clock, concurrency=2, backoff_min=1.0, backoff_max=30.0)
    lp.startService()
    yield lp
    result_of(lp.stopService())


def test_a_kick_during_a_scan_scans_again_when_it_ends(loop: MemoryLoop) -> None:
    loop.gate = Deferred()
    loop.kick()  # the query is asked while the table is empty
    loop.put("late")
    loop.kick()  # during the scan: only noted
    assert loop.runs == []
    gate, loop.gate = loop.gate, None
    gate.callback(None)
    assert loop.runs == ["late"]  # picked up by the second scan, not by a timer


def test_a_task_finishing_during_the_query_is_not_started_again(loop: MemoryLoop) -> None:
    loop.hold = True
    loop.put("a")
    loop.kick()
    assert loop.runs == ["a"]
    loop.gate = Deferred()
    loop.kick()  # the answer will still list "a", which runs
    loop.held["a"].callback(None)  # "a" finishes (and its row goes) before the answer arrives
    gate, loop.gate = loop.gate, None
    gate.callback(None)
    assert loop.runs == ["a"]
    assert loop.table == {}


def test_a_failed_scan_is_logged_and_tried_again_after_backoff_max(loop: MemoryLoop, clock: Clock) -> None:
    loop.put("x")
    loop.fail_query = True
    with capturedLogs() as events:
        loop.kick()
    [failed] = [e for e in events if "log_failure" in e]
    assert failed["what"] == "memory" and failed["delay"] == 30.0
    assert loop.runs == []
    clock.advance(29.0)
    assert loop.runs == []
    clock.advance(1.0)
    assert loop.runs == ["x"]


def test_a_failed_task_is_due_again_after_its_backoff(loop: MemoryLoop, clock: Clock) -> None:
    loop.errors["y"] = ValueError("no")
    loop.put("y")
    with capturedLogs() as events:
        loop.kick()
    [failed] = [e for e in events if e.get("name") == "y" and "log_failure" in e]
    assert (failed["attempts"], failed["delay"], failed["error"]) == (1, 1.0, "ValueError: no")
    assert loop.table == {"y": (1001.0, 1)}
    clock.advance(0.5)
    assert loop.runs == ["y"]
    clock.advance(0.5)
    assert loop.runs == ["y", "y"] and loop.table == {}


def test_when_idle_fires_at_once_before_start_and_after_stop(clock: Clock) -> None:
    lp = MemoryLoop(clock)
    lp.put("never run")
    assert result_of(lp.when_idle()) is None
    lp.startService()
    lp.hold = True
    lp.put("held")
    waiting = lp.when_idle()
    assert not waiting.called  # "held" runs
    result_of(lp.stopService())
    assert waiting.called and lp.held["held"].called  # cancelled
    assert "held" in lp.table  # its row stays for the next start
    assert result_of(lp.when_idle()) is None
