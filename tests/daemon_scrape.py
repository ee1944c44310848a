"""A daemon's service on a MemoryReactorClock, its sites behind StubTreq: what the metrics tests of the taps
share (its ``/metrics`` scraped, its ``/readiness`` asked with the clock run past the checks' timeout)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import treq
from results import result_of
from treq.testing import StubTreq
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock


@contextmanager
def running(top: MultiService) -> Iterator[None]:
    top.privilegedStartService()
    top.startService()
    try:
        yield
    finally:
        top.stopService()


def site_stub(reactor: MemoryReactorClock, port: int) -> StubTreq:
    """A StubTreq on the resource of the site listening on ``port``."""
    [site] = [factory for p, factory, _backlog, _interface in reactor.tcpServers if p == port]
    return StubTreq(site.resource)


def get(stub: StubTreq, path: str, method: str = "GET") -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        response = await stub.request(method, "http://daemon.test" + path)
        return response.code, await treq.content(response)

    return result_of(Deferred.fromCoroutine(go()), stub.flush)


def readiness(stub: StubTreq, reactor: MemoryReactorClock, timeout: float = 5.0) -> tuple[int, Any]:
    """``GET /readiness``, the clock advanced by ``timeout``: (status, JSON)."""

    async def go() -> tuple[int, Any]:
        response = await stub.get("http://daemon.test/readiness")
        return response.code, await treq.json_content(response)

    d = Deferred.fromCoroutine(go())
    stub.flush()
    reactor.advance(timeout)
    return result_of(d, stub.flush)
