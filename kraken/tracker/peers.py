"""Who has which blob: the peer store behind the tracker.

``IPeerStore`` is all the tracker uses, so a Redis store can replace the
in-memory one later. Entries are keyed by info hash and peer id; an entry
not refreshed by an announce for ``ttl`` seconds is gone.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Awaitable

import attrs
from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from kraken.core.peer import PeerInfo


class IPeerStore(Interface):
    """Peers of each blob, by info hash. ``now`` is the caller's clock."""

    def update(info_hash: str, peer: PeerInfo, now: float) -> Awaitable[None]:
        """Record (or refresh) ``peer`` as a peer of ``info_hash``."""

    def peers(info_hash: str, limit: int, now: float) -> Awaitable[list[PeerInfo]]:
        """At most ``limit`` live peers of ``info_hash``; seeders first when there are more."""


@attrs.define
class _Entry:
    peer: PeerInfo
    seen: float


@implementer(IPeerStore)
class MemoryPeerStore(TimerService):
    """The in-memory peer store (Kraken's ``peerstore.local``).

    Expiry is lazy (``peers`` skips and drops stale entries) plus a sweep
    every ``ttl / 2`` (between 1 s and 5 min) on the injected clock, so blobs
    nobody asks about again do not stay in memory. Memory is bounded: at
    most ``max_peers`` peers per blob (the least recently seen is evicted)
    and ``max_blobs`` blobs (the least recently announced is evicted).
    """

    log = Logger()

    def __init__(
        self,
        ttl: float,
        clock: IReactorTime,
        *,
        max_peers: int = 1000,
        max_blobs: int = 100_000,
        rng: random.Random | None = None,
    ) -> None:
        if ttl <= 0 or max_peers <= 0 or max_blobs <= 0:
            raise ValueError("ttl, max_peers and max_blobs must be positive")
        super().__init__(max(1.0, min(ttl / 2, 300.0)), self._tick)
        self.clock = clock
        self._clock = clock
        self.setName("peer-store")
        self._ttl = ttl
        self._max_peers = max_peers
        self._max_blobs = max_blobs
        self._rng = rng or random.Random()
        # info hash -> peer id -> entry; both ordered from least to most recently seen.
        self._blobs: OrderedDict[str, OrderedDict[str, _Entry]] = OrderedDict()
        self._started = False

    # -- IPeerStore --

    async def update(self, info_hash: str, peer: PeerInfo, now: float) -> None:
        self.record(info_hash, peer, now)

    async def peers(self, info_hash: str, limit: int, now: float) -> list[PeerInfo]:
        return self.live(info_hash, limit, now)

    # -- synchronous core --

    def record(self, info_hash: str, peer: PeerInfo, now: float) -> None:
        entries = self._blobs.get(info_hash)
        if entries is None:
            entries = self._blobs[info_hash] = OrderedDict()
            while len(self._blobs) > self._max_blobs:
                evicted, _ = self._blobs.popitem(last=False)
                self.log.debug("peer store full: forgot {infohash}", infohash=evicted)
        else:
            self._blobs.move_to_end(info_hash)
        entries.pop(peer.peer_id, None)
        entries[peer.peer_id] = _Entry(peer, now)
        while len(entries) > self._max_peers:
            entries.popitem(last=False)

    def live(self, info_hash: str, limit: int, now: float) -> list[PeerInfo]:
        entries = self._blobs.get(info_hash)
        if entries is None or limit <= 0:
            return []
        self._drop_stale(info_hash, entries, now)
        if len(entries) <= limit:
            return [e.peer for e in entries.values()]
        # Seeders first, random within seeders and within leechers: sample, do not shuffle everything.
        seeders = [e.peer for e in entries.values() if e.peer.complete]
        if len(seeders) >= limit:
            return self._rng.sample(seeders, limit)
        leechers = [e.peer for e in entries.values() if not e.peer.complete]
        return self._rng.sample(seeders, len(seeders)) + self._rng.sample(leechers, limit - len(seeders))

    def expire(self, now: float) -> int:
        """Drop every entry not seen within ``ttl`` of ``now``; returns how many."""
        dropped = 0
        for info_hash, entries in list(self._blobs.items()):
            dropped += self._drop_stale(info_hash, entries, now)
        return dropped

    def __len__(self) -> int:
        """How many (blob, peer) entries are held, stale ones included."""
        return sum(len(entries) for entries in self._blobs.values())

    def _drop_stale(self, info_hash: str, entries: OrderedDict[str, _Entry], now: float) -> int:
        dropped = 0
        while entries:
            oldest = next(iter(entries.values()))
            if now - oldest.seen <= self._ttl:
                break
            entries.popitem(last=False)
            dropped += 1
        if not entries:
            self._blobs.pop(info_hash, None)
        return dropped

    # -- the sweep --

    def _tick(self) -> None:
        if not self._started:  # TimerService calls once at start: skip that one
            self._started = True
            return
        try:
            dropped = self.expire(self._clock.seconds())
        except Exception:
            self.log.failure("peer store sweep failed")
            return
        if dropped:
            self.log.debug("peer store sweep dropped {count} peers", count=dropped, blobs=len(self._blobs))
