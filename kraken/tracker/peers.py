"""Who has which blob: the peer store behind the tracker.

``IPeerStore`` is all the tracker uses, so a Redis store can replace the
in-memory one later. Entries are keyed by info hash and peer id; an entry
not refreshed by an announce for ``ttl`` seconds is gone.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable

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


class _Entry:
    """One peer of one blob: the latest announce, when it came, and where the
    peer sits in its swarm's list of seeders or leechers."""

    __slots__ = ("peer", "seen", "slot")

    def __init__(self, peer: PeerInfo, seen: float) -> None:
        self.peer = peer
        self.seen = seen
        self.slot = -1


class _Swarm:
    """The peers of one blob: by peer id from the least to the most recently
    seen (for expiry and eviction), and as two plain lists, seeders and
    leechers, to sample from without looking at every entry."""

    __slots__ = ("entries", "leechers", "seeders")

    def __init__(self) -> None:
        self.entries: OrderedDict[str, _Entry] = OrderedDict()
        self.seeders: list[PeerInfo] = []
        self.leechers: list[PeerInfo] = []

    def add(self, entry: _Entry) -> None:
        group = self.seeders if entry.peer.complete else self.leechers
        entry.slot = len(group)
        group.append(entry.peer)

    def remove(self, entry: _Entry) -> None:
        """Take ``entry`` out of its list: the list's last peer takes its slot."""
        group = self.seeders if entry.peer.complete else self.leechers
        last = group.pop()
        if entry.slot < len(group):
            group[entry.slot] = last
            self.entries[last.peer_id].slot = entry.slot

    def evict_oldest(self) -> _Entry:
        _, entry = self.entries.popitem(last=False)
        self.remove(entry)
        return entry


def sample(population: list[PeerInfo], k: int, random: Callable[[], float]) -> list[PeerInfo]:
    """``k`` of ``population`` chosen uniformly at random (all of it, in its own
    order, if it has no more than ``k``). A partial Fisher-Yates shuffle of a
    copy with ``random()`` floats: ``random.sample`` draws each index with
    ``getrandbits`` in Python, three times slower at the tracker's sizes."""
    n = len(population)
    if k >= n:
        return list(population)
    pool = list(population)
    for i in range(k):
        j = i + int(random() * (n - i))
        pool[i], pool[j] = pool[j], pool[i]
    del pool[k:]
    return pool


@implementer(IPeerStore)
class MemoryPeerStore(TimerService):
    """The in-memory peer store (Kraken's ``peerstore.local``).

    Expiry is lazy (``peers`` skips and drops stale entries) plus a sweep
    every ``ttl / 2`` (between 1 s and 5 min) on the injected clock, so blobs
    nobody asks about again do not stay in memory. Memory is bounded: at
    most ``max_peers`` peers per blob (the least recently seen is evicted)
    and ``max_blobs`` blobs (the least recently announced is evicted).

    An announce and a lookup cost the same however many peers a blob has,
    apart from copying the list sampled from: no step looks at every entry.
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
        self._random = (rng or random.Random()).random
        # info hash -> its swarm, from the least to the most recently announced.
        self._blobs: OrderedDict[str, _Swarm] = OrderedDict()
        self._started = False

    # -- IPeerStore --

    async def update(self, info_hash: str, peer: PeerInfo, now: float) -> None:
        self.record(info_hash, peer, now)

    async def peers(self, info_hash: str, limit: int, now: float) -> list[PeerInfo]:
        return self.live(info_hash, limit, now)

    # -- synchronous core --

    def record(self, info_hash: str, peer: PeerInfo, now: float) -> None:
        swarm = self._blobs.get(info_hash)
        if swarm is None:
            swarm = self._blobs[info_hash] = _Swarm()
            while len(self._blobs) > self._max_blobs:
                evicted, _ = self._blobs.popitem(last=False)
                self.log.debug("peer store full: forgot {infohash}", infohash=evicted)
        else:
            self._blobs.move_to_end(info_hash)
        entries = swarm.entries
        entry = entries.get(peer.peer_id)
        if entry is None:
            entry = entries[peer.peer_id] = _Entry(peer, now)
            swarm.add(entry)
            while len(entries) > self._max_peers:
                swarm.evict_oldest()
            return
        entry.seen = now
        entries.move_to_end(peer.peer_id)
        if entry.peer != peer:  # completed, or moved to another address
            swarm.remove(entry)
            entry.peer = peer
            swarm.add(entry)

    def live(self, info_hash: str, limit: int, now: float) -> list[PeerInfo]:
        """At most ``limit`` live peers of ``info_hash``: every seeder, then
        leechers, when that is no more than ``limit``; else a uniform random
        sample, seeders first (only seeders when there are ``limit`` of them)."""
        swarm = self._blobs.get(info_hash)
        if swarm is None or limit <= 0:
            return []
        self._drop_stale(info_hash, swarm, now)
        seeders = swarm.seeders
        if len(seeders) >= limit:
            return sample(seeders, limit, self._random)
        return seeders + sample(swarm.leechers, limit - len(seeders), self._random)

    def expire(self, now: float) -> int:
        """Drop every entry not seen within ``ttl`` of ``now``; returns how many."""
        dropped = 0
        for info_hash, swarm in list(self._blobs.items()):
            dropped += self._drop_stale(info_hash, swarm, now)
        return dropped

    def __len__(self) -> int:
        """How many (blob, peer) entries are held, stale ones included."""
        return sum(len(swarm.entries) for swarm in self._blobs.values())

    def _drop_stale(self, info_hash: str, swarm: _Swarm, now: float) -> int:
        dropped = 0
        entries = swarm.entries
        while entries:
            oldest = next(iter(entries.values()))
            if now - oldest.seen <= self._ttl:
                break
            swarm.evict_oldest()
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
