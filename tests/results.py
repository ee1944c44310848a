"""Getting a result out of a Deferred or coroutine in a unit test, without waiting."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def outcome_of(work: Deferred[Any] | Coroutine[Any, Any, Any], pump: Callable[[], None] = lambda: None) -> Any:
    """What ``work`` ends with, a result or a ``Failure``, pumping until it is done (no waiting)."""
    d = work if isinstance(work, Deferred) else Deferred.fromCoroutine(work)
    out: list[Any] = []
    d.addBoth(out.append)
    for _ in range(1000):
        if out:
            break
        pump()
    assert out, "never finished"
    return out[0]


def result_of(work: Deferred[Any] | Coroutine[Any, Any, Any], pump: Callable[[], None] = lambda: None) -> Any:
    """The result of ``work``, pumping until it is done (no waiting); its failure is raised."""
    out = outcome_of(work, pump)
    if isinstance(out, Failure):
        out.raiseException()
    return out
