"""Shared pieces of the tracker tests: peers, a fake origin, a TrackerHTTP behind StubTreq."""

from __future__ import annotations

import json
import random
from collections.abc import Coroutine
from typing import Any

import treq
from results import result_of
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from kraken.core import Digest, MetaInfo
from kraken.core.peer import PeerInfo
from kraken.tracker.http import TrackerHTTP
from kraken.tracker.origins import OriginPeers
from kraken.tracker.peers import MemoryPeerStore

BASE = "http://tracker.test"
NAMESPACE = "library/alpine"


def pid(n: int, width: int = 40) -> str:
    return f"{n:0{width}x}"


def peer(n: int, *, complete: bool = False, origin: bool = False) -> PeerInfo:
    return PeerInfo(pid(n), f"10.0.{n // 256}.{n % 256}", 16001, complete=complete, origin=origin)


def blob(seed: str, size: int = 10) -> tuple[Digest, MetaInfo]:
    data = (seed.encode() * size)[:size]
    info = MetaInfo.from_bytes(data, 4)
    return info.digest, info


class FakeOrigin:
    """What the tracker needs of an OriginClient. ``hold`` makes metainfo
    fetches wait until ``release()``; ``error`` makes them fail.

    ``peers`` answers ``seeds[digest]``, else ``seeders``; ``peers_hold`` and
    ``peers_error`` hold or fail those lookups, ``peer_calls`` records them.
    """

    def __init__(self) -> None:
        self.infos: dict[Digest, MetaInfo] = {}
        self.calls: list[tuple[str, Digest]] = []
        self.error: Exception | None = None
        self.hold = False
        self._held: list[Deferred[None]] = []
        self.seeders: list[PeerInfo] = []
        self.seeds: dict[Digest, list[PeerInfo]] = {}
        self.peer_calls: list[Digest] = []
        self.peers_error: Exception | None = None
        self.peers_hold = False

    def add(self, seed: str) -> tuple[Digest, MetaInfo]:
        digest, info = blob(seed)
        self.infos[digest] = info
        return digest, info

    async def metainfo(self, namespace: str, digest: Digest) -> MetaInfo | None:
        self.calls.append((namespace, digest))
        if self.hold:
            gate: Deferred[None] = Deferred()
            self._held.append(gate)
            await gate
        if self.error is not None:
            raise self.error
        return self.infos.get(digest)

    async def peers(self, digest: Digest) -> list[PeerInfo]:
        self.peer_calls.append(digest)
        if self.peers_hold:
            gate: Deferred[None] = Deferred()
            self._held.append(gate)
            await gate
        if self.peers_error is not None:
            raise self.peers_error
        return list(self.seeds.get(digest, self.seeders))

    def release(self) -> None:
        held, self._held = self._held, []
        for gate in held:
            gate.callback(None)


class App:
    """A TrackerHTTP over a MemoryPeerStore and a FakeOrigin, on a task.Clock, behind StubTreq.
    ``origin_peers`` are the origins the fake origin says hold every blob."""

    def __init__(
        self,
        *,
        origin_peers: list[PeerInfo] | None = None,
        max_peers: int = 50,
        ttl: float = 30.0,
        store: Any = None,
    ) -> None:
        """``store``: a peer store of the test's own instead of a ``MemoryPeerStore`` with ``ttl``."""
        self.clock = Clock()
        self.clock.advance(1000)
        self.origin = FakeOrigin()
        self.origin.seeders = list(origin_peers or [])
        self.store = store if store is not None else MemoryPeerStore(ttl, self.clock)
        origin: Any = self.origin
        self.http = TrackerHTTP(
            self.store,
            origin,
            clock=self.clock,
            announce_interval=3.0,
            max_peers=max_peers,
            origin_peers=OriginPeers(origin, clock=self.clock, ttl=10.0, size=100),
            metainfo_cache_ttl=300.0,
            metainfo_cache_size=2,
            rng=random.Random(7),
        )
        self.stub = StubTreq(self.http.resource())

    def pump(self) -> None:
        self.stub.flush()

    def run(self, work: Deferred[Any] | Coroutine[Any, Any, Any]) -> Any:
        return result_of(work, self.pump)

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
        async def go() -> tuple[int, bytes]:
            response = await self.stub.request(method, BASE + path, **kwargs)
            return response.code, await treq.content(response)

        return self.run(go())

    def json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        code, body = self.request(method, path, **kwargs)
        return code, json.loads(body)

    def announce(self, doc: dict[str, Any]) -> tuple[int, Any]:
        return self.json("POST", "/announce", data=json.dumps(doc).encode())

    async def announce_async(self, doc: dict[str, Any]) -> tuple[int, Any]:
        """``announce`` without driving it: the caller pumps and advances the clock."""
        response = await self.stub.post(BASE + "/announce", data=json.dumps(doc).encode())
        return response.code, json.loads(await treq.content(response))


def announce_doc(p: PeerInfo, info_hash: str = "ab" * 32, digest: Digest | None = None) -> dict[str, Any]:
    return {
        "peer_id": p.peer_id,
        "ip": p.ip,
        "port": p.port,
        "namespace": NAMESPACE,
        "digest": str(digest or blob("x")[0]),
        "info_hash": info_hash,
        "complete": p.complete,
    }
