"""Fixtures for the agent tests: a test clock that also runs the global
cooperator (``static.File`` streams through it)."""

from __future__ import annotations

import pytest
from twisted.internet import task


@pytest.fixture
def clock() -> task.Clock:
    return task.Clock()


@pytest.fixture(autouse=True)
def _cooperator(monkeypatch: pytest.MonkeyPatch, clock: task.Clock) -> None:
    monkeypatch.setattr(task, "_theCooperator", task.Cooperator(scheduler=lambda f: clock.callLater(0, f)))
