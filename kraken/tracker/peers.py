"""Who has which blob: the peer store behind the tracker.

``IPeerStore`` is all the tracker uses, so a Redis store can replace the
in-memory one later. Entries are keyed by info hash and peer id; an entry
not refreshed by an announce for ``ttl`` seconds is gone.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Awaitable, Iterator, Sequence

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from kraken.core.peer import PeerInfo
from kraken.tracker.fair import fair_sample
from kraken.tracker.progress import Progress
from kraken.tracker.swarm import Group, Swarm
from kraken.tracker.unreachable import UnreachablePolicy


class IPeerStore(Interface):
    """Peers of each blob, by info hash. ``now`` is the caller's clock; ``source``
    the address an announce came from (``kraken.tracker.fair.source_key``)."""

    def update(
        info_hash: str, peer: PeerInfo, now: float, source: str, progress: Progress | None = None
    ) -> Awaitable[None]:
        """Record (or refresh) ``peer``, announced from ``source``, as a peer of ``info_hash``. The tracker
        passes ``progress`` (a ``kraken.tracker.progress.Progress``) only when the announce had one; the
        stores keep it with the entry, in memory (with Redis: in the local copy)."""

    def peers(info_hash: str, limit: int, now: float) -> Awaitable[list[PeerInfo]]:
        """At most ``limit`` live peers of ``info_hash`` that may be handed out, chosen
        fairly across announcing addresses and in the order to hand them out
        (``kraken.tracker.fair``)."""

    def report_unreachable(info_hash: str, peer_ids: Sequence[str], source: str, now: float) -> Awaitable[None]:
        """An agent announcing from ``source`` failed to reach ``peer_ids`` (``kraken.tracker.unreachable``)."""


@implementer(IPeerStore)
class MemoryPeerStore(TimerService):
    """The in-memory peer store (Kraken's ``peerstore.local``).

    Expiry is lazy (``peers`` skips and drops stale entries) plus a sweep
    every ``ttl / 2`` (between 1 s and 5 min) on the injected clock, so blobs
    nobody asks about again do not stay in memory. Memory is bounded: at
    most ``max_peers`` peers per blob (the least recently seen is evicted),
    of them at most ``max_per_source`` announced from one source address
    (that address's least recently seen is evicted), and ``max_blobs`` blobs
    (the least recently announced is evicted).

    Lookups choose fairly across announcing addresses (``kraken.tracker.fair``)
    and leave out the peers hidden by reports that they are unreachable
    (``policy``; ``kraken.tracker.unreachable``). An announce and a lookup
    cost the same however many peers a blob has, apart from copying the list
    sampled from: no step looks at every entry.
    """

    log = Logger()

    def __init__(
        self,
        ttl: float,
        clock: IReactorTime,
        *,
        max_peers: int = 1000,
        max_per_source: int = 200,
        max_blobs: int = 100_000,
        policy: UnreachablePolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if ttl <= 0 or max_peers <= 0 or max_per_source <= 0 or max_blobs <= 0:
            raise ValueError("ttl, max_peers, max_per_source and max_blobs must be positive")
        super().__init__(max(1.0, min(ttl / 2, 300.0)), self._tick)
        self.clock = clock
        self._clock = clock
        self.setName("peer-store")
        self._ttl = ttl
        self._max_peers = max_peers
        self._max_per_source = max_per_source
        self._max_blobs = max_blobs
        self._policy = policy or UnreachablePolicy(60.0)
        self._random = (rng or random.Random()).random
        # info hash -> its swarm, from the least to the most recently announced.
        self._blobs: OrderedDict[str, Swarm] = OrderedDict()
        self._started = False

    # -- IPeerStore --

    async def update(
        self, info_hash: str, peer: PeerInfo, now: float, source: str, progress: Progress | None = None
    ) -> None:
        self.record(info_hash, peer, now, source, progress)

    async def peers(self, info_hash: str, limit: int, now: float) -> list[PeerInfo]:
        return self.live(info_hash, limit, now)

    async def report_unreachable(self, info_hash: str, peer_ids: Sequence[str], source: str, now: float) -> None:
        self.report(info_hash, peer_ids, source, now)

    # -- synchronous core --

    def record(self, info_hash: str, peer: PeerInfo, now: float, source: str, progress: Progress | None = None) -> None:
        """Record (or refresh) ``peer`` of ``info_hash`` as announced from ``source``, with its ``progress``."""
        swarm = self._blobs.get(info_hash)
        if swarm is None:
            swarm = self._blobs[info_hash] = Swarm()
            while len(self._blobs) > self._max_blobs:
                evicted, _ = self._blobs.popitem(last=False)
                self.log.debug("peer store full: forgot {infohash}", infohash=evicted)
        else:
            self._blobs.move_to_end(info_hash)
        entries = swarm.entries
        entry = entries.get(peer.peer_id)
        if entry is None:
            entry = swarm.add(peer, now, source)
            if progress is not None:
                entry.progress, swarm.digest = progress.doc, progress.digest
            self._bound(info_hash, swarm, entry.group)
            while len(entries) > self._max_peers:
                swarm.drop_oldest()
            return
        entry.seen = now
        if progress is not None:
            entry.progress, swarm.digest = progress.doc, progress.digest
        entries.move_to_end(peer.peer_id)
        if entry.group.key != source:  # announced from another address
            swarm.move(entry, source)
            self._bound(info_hash, swarm, entry.group)
        else:
            entry.group.entries.move_to_end(peer.peer_id)
        if entry.peer != peer:  # completed, or moved to another address
            swarm.replace(entry, peer)

    def _bound(self, info_hash: str, swarm: Swarm, group: Group) -> None:
        """At most ``max_per_source`` entries in ``group``: its least recently seen go."""
        group_entries = group.entries
        if len(group_entries) <= self._max_per_source:
            return
        if not group.warned:
            group.warned = True
            self.log.warn(
                "peer store: {source} announced {count} peers of {infohash}, the most one address may;"
                " its least recently seen are dropped",
                source=group.key, count=len(group_entries), infohash=info_hash,
            )  # fmt: skip
        while len(group_entries) > self._max_per_source:
            swarm.drop(next(iter(group_entries.values())))

    def report(self, info_hash: str, peer_ids: Sequence[str], source: str, now: float) -> None:
        """Reports from ``source`` that it failed to reach ``peer_ids``; peers
        this store does not hold for ``info_hash`` are passed over."""
        swarm = self._blobs.get(info_hash)
        if swarm is None:
            return
        for peer_id in peer_ids:
            entry = swarm.entries.get(peer_id)
            if entry is None:
                continue
            was = entry.reports.until if entry.reports is not None else float("-inf")
            reports = entry.reports = self._policy.report(entry.reports, source, now)
            if reports.until != was and reports.hidden(now):
                if entry.slot >= 0:
                    self.log.info(
                        "peer {peer} of {infohash} hidden until {until}: reported unreachable by {reporters}",
                        peer=peer_id, infohash=info_hash, until=reports.until, reporters=sorted(reports.reporters),
                    )  # fmt: skip
                swarm.hide(entry)

    def live(self, info_hash: str, limit: int, now: float) -> list[PeerInfo]:
        """At most ``limit`` live peers of ``info_hash`` that are not hidden,
        chosen and ordered by ``kraken.tracker.fair.fair_sample``: with one
        announcing address, seeders first, then leechers, at random."""
        swarm = self._blobs.get(info_hash)
        if swarm is None or limit <= 0:
            return []
        self._drop_stale(info_hash, swarm, now)
        if swarm.hidden:
            swarm.unhide(now)
        return fair_sample(swarm.shown, swarm.seeding, limit, self._random)

    def expire(self, now: float) -> int:
        """Drop every entry not seen within ``ttl`` of ``now``; returns how many."""
        dropped = 0
        for info_hash, swarm in list(self._blobs.items()):
            dropped += self._drop_stale(info_hash, swarm, now)
        return dropped

    def __len__(self) -> int:
        """How many (blob, peer) entries are held, stale ones included."""
        return sum(len(swarm.entries) for swarm in self._blobs.values())

    @property
    def ttl(self) -> float:
        """Seconds an entry lives without an announce."""
        return self._ttl

    def recent(self) -> Iterator[tuple[str, Swarm]]:
        """(info hash, swarm) of every blob held, the most recently announced first (the live swarm page).
        Read it at once, on the reactor thread: announces change what it iterates."""
        return reversed(self._blobs.items())

    def swarm(self, info_hash: str) -> Swarm | None:
        """The swarm of ``info_hash``, if held (stale entries included: the reader skips them)."""
        return self._blobs.get(info_hash)

    def blob_count(self) -> int:
        """How many blobs have entries held (``/stats``)."""
        return len(self._blobs)

    def _drop_stale(self, info_hash: str, swarm: Swarm, now: float) -> int:
        dropped = 0
        entries = swarm.entries
        while entries:
            oldest = next(iter(entries.values()))
            if now - oldest.seen <= self._ttl:
                break
            swarm.drop(oldest)
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
