"""An adbapi ``ConnectionPool`` whose queries run at once on the calling thread, for unit tests of the SQLite
stores (``kraken.sqlite``) without threads or a running reactor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure


class InlineThreadPool:
    """Stands in for the pool's ``ThreadPool``: runs the work at once."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], None], f: Callable[..., Any], *a: Any, **kw: Any
    ) -> None:
        try:
            result = f(*a, **kw)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class InlineReactor(MemoryReactorClock):
    """A MemoryReactorClock whose ``callFromThread`` runs the call at once."""

    def callFromThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        f(*a, **kw)


def inline(pool: adbapi.ConnectionPool) -> adbapi.ConnectionPool:
    """``pool`` with its thread pool replaced by an inline one: every query has run by the time
    ``runInteraction`` returns."""
    pool.threadpool = InlineThreadPool()
    return pool
