"""An in-memory origin for tests: a CAStore over a directory, an OriginNode and its OriginHTTP behind StubTreq,
a Clock; and a fixed placement for nodes that are not in a ring."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import treq
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, Cooperator
from twisted.python.failure import Failure
from twisted.web.resource import IResource

from kraken.core import Digest, PieceLengthRule
from kraken.core.peer import PeerInfo
from kraken.origin.cluster import ClusterStats
from kraken.origin.http import OriginHTTP
from kraken.origin.node import OriginNode
from kraken.store import CAStore
from kraken.workers import InlineWorker

ADVERTISE = "origin.test:15002"
PIECE = 4  # tiny pieces so small test blobs have several
#: The origin's own P2P address (what the origin tap will pass as ``peer``).
PEER = PeerInfo("0123456789abcdef" * 2 + "01234567", "10.0.0.5", 15001, complete=True, origin=True)


class Origin:
    def __init__(self, root: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clock = Clock()
        # static.File streams through the global cooperator: run it on our clock (STYLE.md §10).
        monkeypatch.setattr(task, "_theCooperator", Cooperator(scheduler=lambda f: self.clock.callLater(0, f)))
        self.root = root
        self.worker = InlineWorker()
        self.store = CAStore(
            root, worker=self.worker, piece_rule=PieceLengthRule(((0, PIECE),)), now=self.clock.seconds
        )
        self._stubs: list[StubTreq] = []
        self.serve(PEER)

    def serve(self, peer: PeerInfo | None = None, advertise: str = ADVERTISE, **node: Any) -> OriginNode:
        """Answer through a new ``OriginNode(store, advertise=, **node)`` seeding as ``peer``; returns it."""
        self.node = OriginNode(self.store, advertise=advertise, **node)
        self.node.seeds_as(peer)
        self.http = OriginHTTP(self.node)
        self.stub = self.stub_for(self.http.resource())
        return self.node

    def stub_for(self, resource: IResource) -> StubTreq:
        """A StubTreq over ``resource`` that ``run`` flushes.

        StubTreq only takes bytes as request bodies; OriginClient sends an
        ``IBodyProducer``. So ``request`` is a plain ``HTTPClient`` over the same
        in-memory agent, whose bodies go through ``IBodyProducer(data)``.
        """
        stub = StubTreq(resource)
        stub.request = HTTPClient(agent=stub._agent).request  # type: ignore[method-assign]
        self._stubs.append(stub)
        return stub

    def run(self, work: Deferred[Any] | Coroutine[Any, Any, Any], step: float = 0.0) -> Any:
        """Drive the clock (``step`` seconds a turn) and the stub until
        ``work`` finishes; return its result or raise its failure."""
        d = work if isinstance(work, Deferred) else Deferred.fromCoroutine(work)
        out: list[Any] = []
        d.addBoth(out.append)
        for _ in range(10_000):
            if out:
                break
            self.clock.advance(step)
            for stub in self._stubs:
                stub.flush()
        assert out, "the request never finished"
        if isinstance(out[0], Failure):
            out[0].raiseException()
        return out[0]

    def request(self, method: str, url: str, **kwargs: Any) -> tuple[int, Any, bytes]:
        """(status, headers, body) of one request against the origin."""

        async def go() -> tuple[int, Any, bytes]:
            response = await self.stub.request(method, "http://origin.test" + url, **kwargs)
            body = await treq.content(response)
            return response.code, response.headers, body

        return self.run(go())


class FixedPlacement:
    """An ``OriginNode``'s placement outside a ring: ``locations`` as given, no replicas to copy to."""

    def __init__(self, locations: Callable[[Digest], list[str]], mine: Callable[[Digest], bool] | None = None) -> None:
        self.locations = locations
        self._mine = mine

    def mine(self, digest: Digest) -> bool:
        return True if self._mine is None else self._mine(digest)

    async def replicate(self, namespace: str, digest: Digest, size: int) -> None:
        pass

    def stats(self) -> ClusterStats:
        return ClusterStats()
