"""Where blocking work runs: named thread pools, or inline in unit tests.

Library code takes a ``Worker`` and awaits ``worker.run(f, *args)``. In a
daemon it is a ``ThreadWorker`` over a pool owned by a ``ThreadPoolService``;
in unit tests an ``InlineWorker`` runs ``f`` at once, so tests need no
reactor and never wait.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class Worker(Protocol):
    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]: ...


class InlineWorker:
    """Runs the function immediately on the calling thread (tests only)."""

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        try:
            return succeed(f(*args, **kwargs))
        except BaseException:
            return fail()


class ThreadPoolService(Service):
    """Owns a ``ThreadPool``: started with the daemon, stopped (joined) after
    everything added after it has stopped."""

    def __init__(self, name: str, minthreads: int = 1, maxthreads: int = 4) -> None:
        self.setName(f"threads-{name}")
        self.pool = ThreadPool(minthreads, maxthreads, name=f"kraken-{name}")

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


class ThreadWorker:
    def __init__(self, reactor: IReactorFromThreads, pool: ThreadPool) -> None:
        self._reactor = reactor
        self._pool = pool

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        return deferToThreadPool(self._reactor, self._pool, f, *args, **kwargs)
