"""A ``Worker`` (``kraken.workers``) for unit tests that runs each job only when the test says so."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred


class ManualWorker:
    """Holds every job until ``step`` runs the oldest, so a test can build a backlog and watch it drain."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append((d, f, args))
        return d

    def step(self) -> None:
        d, f, args = self.jobs.pop(0)
        try:
            result = f(*args)
        except Exception:
            d.errback()
        else:
            d.callback(result)
