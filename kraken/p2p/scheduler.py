"""The P2P service of an agent or an origin: ``Scheduler``, a small facade over its torrents.

- **Agent** (``announcer`` given): ``download(namespace, digest)`` serves the blob from the cache, or creates the
  torrent (metainfo from the tracker), announces it and dials the peers the tracker hands out; every caller
  waiting for that blob shares the one download. The finished blob moves atomically into the cache and the
  torrent announces once more, complete, then keeps seeding.
- **Origin** (no announcer): only accepts connections and serves the blobs of its cache. The tracker learns which
  origins hold a blob from the origins themselves.

The scheduler owns the service's lifecycle (the preemption loop, the buckets closed at stop), the single-flight
start of downloads and the wiring of its parts, each of which says what it owns:

- ``torrent.py``: the torrents, their connections and the ``Stats`` counters (the state, in one place);
- ``announce.py``: announcing and dialling (on the pure ``dials.py``), and ``connect_tcp``;
- ``connections.py``: admission, the life of connections, eviction and blacklists (on the pure ``slots.py``);
- ``leech.py``: requesting, receiving, checking and writing pieces, finishing downloads (on the pure
  ``dispatch.py``);
- ``seed.py``: serving pieces through the egress bucket (on the pure seeding policy, ``seeding.py``).

All state lives on the reactor thread; disk and hashing run in the store's workers.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from kraken.core import Digest, MetaInfo
from kraken.core.peer import PeerInfo
from kraken.net.histogram import Histogram
from kraken.net.server import listen
from kraken.net.tls import TLSContexts
from kraken.p2p.announce import Announcer, Announcing, Connector, connect_tcp
from kraken.p2p.config import P2PConfig
from kraken.p2p.connections import Connections, MissingBlob
from kraken.p2p.leech import Leech, MetaInfoSource
from kraken.p2p.seed import Seed
from kraken.p2p.seeding import Seeding
from kraken.p2p.session import IPeerSessionObserver, PeerSession
from kraken.p2p.torrent import BlobNotFound, Conn, Download, DownloadFailed, Stats, Torrent, Torrents
from kraken.singleflight import SingleFlight
from kraken.store import CAStore
from kraken.throttle import TokenBucket, Unlimited


@attrs.frozen
class _Start:
    """The key of a download's start: the digest. The namespace rides along (the first caller's is used)."""

    digest: Digest
    namespace: str = attrs.field(eq=False)


class Scheduler(Service):
    def __init__(
        self,
        config: P2PConfig,
        *,
        reactor: Any,
        store: CAStore,
        metainfo: MetaInfoSource | None = None,
        announcer: Announcer | None = None,
        peer_id: str | None = None,
        advertise: tuple[str, int] | None = None,
        connect: Connector | None = None,
        rng: random.Random | None = None,
        on_missing: MissingBlob | None = None,
        tls: TLSContexts | None = None,
    ) -> None:
        """``reactor`` gives the clock (and dials peers unless ``connect`` is given). Without ``announcer`` and
        ``metainfo`` this is an origin's scheduler: it only serves the blobs of ``store``. ``on_missing`` is told
        about a handshake for a blob the store lacks (an origin fetches it from its backend); while it answers
        True (being fetched) the peer hears BUSY, and tries again a few seconds later, rather than UNKNOWN_BLOB."""
        self._config = config
        self._clock: IReactorTime = reactor
        self._store = store
        self._tls = tls if config.tls else None
        self._on_missing = on_missing  # handed to Connections; kept here for the origin's wiring test
        ip, port = advertise if advertise is not None else config.advertised()
        self.peer_id = peer_id or config.the_peer_id()
        self._me = PeerInfo(self.peer_id, ip, port)
        self._torrents = Torrents(config, clock=reactor, store=store)
        self._connections = Connections(
            config,
            clock=reactor,
            peer_id=self.peer_id,
            torrents=self._torrents,
            traffic=self,
            running=lambda: bool(self.running),
            on_missing=on_missing,
        )
        self._announcing = Announcing(
            config,
            clock=reactor,
            me=self._me,
            announcer=announcer,
            connect=connect or functools.partial(connect_tcp, reactor, timeout=config.handshake_timeout, tls=self._tls),
            connections=self._connections,
            counts=self._torrents.counts,
        )
        origin = announcer is None  # an origin does not download, and super-seeds a whole copy first
        self._leech, self._seed = self._traffic(reactor, None if origin else metainfo, rng, origin=origin)
        self._starts: SingleFlight[_Start, Torrent] = SingleFlight(
            lambda start: self._leech.create(start.namespace, start.digest), clock=reactor, ttl=0
        )
        self._preemption = LoopingCall(self._preempt)
        self._preemption.clock = self._clock

    def _traffic(
        self, reactor: Any, metainfo: MetaInfoSource | None, rng: random.Random | None, *, origin: bool
    ) -> tuple[Leech, Seed]:
        """The leech and seed drivers."""
        config = self._config
        egress, ingress = _buckets(config, reactor)
        leech = Leech(
            config,
            clock=reactor,
            store=self._store,
            torrents=self._torrents,
            slots=self._connections.slots,
            ingress=ingress,
            rng=rng or random.Random(),
            metainfo=metainfo,
            announce=lambda torrent: self._announcing.soon(torrent, 0.0),
        )
        seed = Seed(
            Seeding(super_seed=config.super_seed, whole_copy_first=origin),
            clock=reactor,
            store=self._store,
            counts=self._torrents.counts,
            slots=self._connections.slots,
            egress=egress,
            running=lambda: bool(self.running),
        )
        return leech, seed

    # --- the API ------------------------------------------------------------------------------------------------

    @property
    def me(self) -> PeerInfo:
        """This peer as others dial it: its id and advertised address."""
        return self._me

    def factory(self) -> Factory:
        """The factory of the P2P listener."""
        return self._connections.factory()

    def listener(self, reactor: Any, component: str) -> StreamServerEndpointService:
        """The P2P listener service (named ``p2p``) on ``config.listen``; it logs "<component> listening on ..."
        with this peer's id and advertised address."""
        return listen(
            self._config.listen,
            self.factory(),
            reactor=reactor,
            component=component,
            name="p2p",
            tls=None if self._tls is None else self._tls.p2p_server(),
            peer_id=self.peer_id,
            advertise=self._me.address,
        )

    def stats(self) -> Stats:
        return self._torrents.stats()

    def download_durations(self) -> dict[tuple[str, ...], Histogram]:
        """The downloads' durations, by size class (``Torrents.download_durations``)."""
        return self._torrents.download_durations.by_labels

    def holds(self, digest: Digest) -> bool:
        """Whether ``digest`` has a torrent here: being downloaded, or seeded (until ``seeder_tti`` after its last
        use). The agent's cache cleanup never evicts such a blob."""
        return self._torrents.get(digest) is not None

    def forget(self, digest: Digest) -> None:
        """The blob left the cache (evicted): drop its finished torrent, if one was opened meanwhile, so that it is
        no longer seeded nor announced (the tracker forgets this peer after its announce TTL). A download is left
        alone."""
        torrent = self._torrents.get(digest)
        if torrent is not None and torrent.complete and not torrent.installing:
            self._torrents.drop(torrent, None)

    def seed(self, namespace: str, info: MetaInfo) -> None:
        """Seed a blob put in the cache by other means (an agent's stream from its origin) as a finished download is
        seeded: a complete torrent, announced once, kept while peers use it (until ``seeder_tti``)."""
        if not self.running or self._torrents.get(info.digest) is not None:
            return
        self._announcing.soon(self._torrents.add(namespace, info, None, None), 0.0)

    async def download(self, namespace: str, digest: Digest) -> str:
        """The path of the blob in the cache, downloading it first unless already there.

        Concurrent calls for one blob share one download. Raises ``BlobNotFound``, ``DownloadFailed``, or
        ``kraken.files.OutOfSpace`` when the disk is full (the partial blob is deleted)."""
        started = await self.start(namespace, digest)
        return started if isinstance(started, str) else await started.finished()

    async def start(self, namespace: str, digest: Digest) -> str | Download:
        """``download`` without the wait: the path of the blob in the cache if it is there, else the download in
        progress (started, or joined), whose pieces a reader may stream as they are checked."""
        if not self.running:
            raise DownloadFailed("the scheduler is stopped")
        path = self._store.blob_path(digest)
        torrent = self._torrents.get(digest)
        if torrent is not None and torrent.complete:
            torrent.last_active = self._clock.seconds()
            return path
        if torrent is None and await self._store.stat(digest) is not None:
            await self._store.touch(digest)
            return path
        torrent = self._torrents.get(digest)
        if torrent is None:
            # Each caller waits on its own Deferred, so cancelling one caller leaves the others waiting.
            torrent = await self._starts.get(_Start(digest, namespace))
        if torrent.complete:
            return path
        if torrent.closed:  # dropped while it was being opened (its install failed, or the scheduler stopped)
            raise DownloadFailed(f"the download of {digest} was dropped")
        return Download(torrent, path)

    # --- Service ------------------------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._preemption.start(self._config.preemption_interval, now=False)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._preemption.running:
            self._preemption.stop()
        for torrent in self._torrents:
            self._torrents.drop(torrent, DownloadFailed("the scheduler stopped"))
        self._seed.close()
        self._leech.close()

    def _preempt(self) -> None:
        """TTIs of torrents and connections, and expiry of blacklist entries (every ``preemption_interval``)."""
        now = self._clock.seconds()
        for torrent in self._torrents:
            self._connections.preempt(torrent, now)
            self._torrents.expire(torrent, now)

    # --- connections.Traffic: the connections' news for the leech and seed drivers --------------------------

    def joined(self, torrent: Torrent, conn: Conn) -> None:
        self._leech.joined(torrent, conn)

    def left(self, torrent: Torrent, conn: Conn) -> None:
        self._seed.forget(conn)
        self._leech.left(torrent, conn)

    def busy(self, torrent: Torrent) -> set[Conn]:
        return self._leech.busy(torrent) | self._seed.busy(torrent)

    def observer(self, torrent: Torrent) -> IPeerSessionObserver:
        return _Observer(self._leech, self._seed, torrent)


@implementer(IPeerSessionObserver)
class _Observer:
    """A torrent's ``IPeerSessionObserver``: requests and cancels go to the seed driver, news of the peer's pieces
    to the leech driver."""

    def __init__(self, leech: Leech, seed: Seed, torrent: Torrent) -> None:
        self._leech = leech
        self._seed = seed
        self._t = torrent

    def piece_requested(self, session: PeerSession, index: int) -> None:
        self._seed.piece_requested(self._t, session, index)

    def piece_cancelled(self, session: PeerSession, index: int) -> None:
        self._seed.piece_cancelled(self._t, session, index)

    def peer_has(self, session: PeerSession, index: int) -> None:
        self._leech.peer_has(self._t, session, index)

    def peer_complete(self, session: PeerSession) -> None:
        self._leech.peer_complete(self._t, session)


def _buckets(config: P2PConfig, clock: IReactorTime) -> tuple[TokenBucket | Unlimited, TokenBucket | Unlimited]:
    """(egress, ingress): token buckets of the configured bandwidth, or unlimited. Only piece payloads count."""
    bandwidth = config.bandwidth
    if not bandwidth.enabled:
        return Unlimited(), Unlimited()
    egress, ingress = bandwidth.egress_bits_per_sec / 8, bandwidth.ingress_bits_per_sec / 8
    return TokenBucket(egress, egress, clock=clock), TokenBucket(ingress, ingress, clock=clock)


__all__ = [
    "Announcer", "BlobNotFound", "Connector", "Download", "DownloadFailed", "MetaInfoSource", "MissingBlob",
    "Scheduler", "Stats",
]  # fmt: skip
