"""Torrents, connections and the announce loop: one ``Scheduler`` per agent and per origin.

A *torrent* is what this daemon knows about one blob in the swarm: its metainfo, the pieces it holds, its peer
connections (at most ``max_conns_per_torrent``) and, while downloading, a ``Dispatcher`` that decides which piece to
ask of whom. Torrents are keyed by digest.

- **Agent** (``announcer`` given): ``download(namespace, digest)`` serves the blob from the cache, or creates the
  torrent (metainfo from the tracker), opens the partial blob (resuming the pieces a previous run left), announces
  to the tracker at the interval it returns and dials the peers it hands out until the torrent has its
  connections; every caller waiting for that blob shares the one download. Each piece is checked against its
  SHA-256 before it is written, then announced (``HAVE``) to the other connections; the finished blob moves
  atomically into the cache and the torrent announces once more, complete, then keeps seeding.
- **Origin** (no announcer): only accepts connections and serves the blobs of its cache. The tracker learns which
  origins hold a blob from the origins themselves.

Any side accepts connections for a blob it holds, whole or in part: the handshake names the blob, and a
completed torrent dropped from memory (seeder TTI) is re-opened from the cache.

Peers are blacklisted for a blob when they cannot be reached, break the protocol or send a corrupt piece; a peer
that answers BUSY (at capacity) is only skipped for a few seconds (``Dials``, kraken/p2p/dials.py, which also
keeps pending dials from using up the connection budget and names the unreachable peers each announce reports).
Inbound handshakes are admitted, and connections that move no piece evicted, by ``Slots`` (kraken/p2p/slots.py).
A torrent created by a download serves its namespace only; one opened from the cache to serve a handshake (the
cache is content-addressed) answers for the namespace it is asked.

Downloading: the ``Dispatcher`` picks pieces rarest first within per-peer pipelines that halve on a timeout and
grow back with each delivery; a request times out only if no byte of its piece has arrived within the request
timeout. A request's slot is given back as soon as its payload has arrived, while the piece is hashed and
written in a worker (within ``PIECE_MEMORY``); piece buffers are reused.

Serving: every peer's requests go into one outbox, sent one piece at a time through the egress bucket, to
connections whose transport has room, rarest among our peers and fewest-copies-served first (see ``_serve``).
Bandwidth: the egress bucket is charged before a piece is read from disk; the ingress bucket when a payload
starts to arrive, and the connection stops reading until the tokens are there.

All state lives on the reactor thread; disk and hashing run in the store's workers.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast
from typing import Protocol as TypingProtocol

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectError, NoRouteError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kraken.core import Bitfield, Digest, MetaInfo
from kraken.core.peer import PeerInfo
from kraken.files import OutOfSpace, is_out_of_space
from kraken.net.server import listen
from kraken.p2p.config import P2PConfig
from kraken.p2p.dials import Dials, Outcome
from kraken.p2p.dispatch import Dispatcher
from kraken.p2p.protocol import PeerProtocol, SessionFactory
from kraken.p2p.session import (
    HANDSHAKE_TIMED_OUT,
    Closed,
    IPeerConnection,
    IPeerSessionObserver,
    PeerDisconnected,
    PeerSession,
    PieceRequestFailed,
    SessionNotOpen,
)
from kraken.p2p.slots import Slots
from kraken.p2p.wire import MAX_ERROR_MESSAGE, Chunk, Error, ErrorCode, Handshake
from kraken.store import CAStore, PartialBlob, PieceCorrupt
from kraken.throttle import TokenBucket, Unlimited


class BlobNotFound(Exception):
    """No origin has the blob (the tracker has no metainfo for it)."""


class DownloadFailed(Exception):
    """The download stalled past the leecher TTI, or the scheduler stopped."""


MetaInfoSource = Callable[[str, Digest], Awaitable[MetaInfo | None]]
"""``(namespace, digest) -> MetaInfo`` or None when no origin has the blob (the tracker client's ``metainfo``)."""


class Announcer(TypingProtocol):
    """``(me, namespace, digest, info_hash, unreachable=[peer ids]) -> (peers, interval)`` (the tracker client's
    ``announce``); ``unreachable`` names the peers this one could not reach since its last announce."""

    def __call__(
        self, me: PeerInfo, namespace: str, digest: Digest, info_hash: str, /, *, unreachable: Sequence[str] = ()
    ) -> Awaitable[tuple[list[PeerInfo], float]]: ...


Connector = Callable[[PeerInfo, Factory], "Deferred[Protocol]"]
"""Dials a peer with a factory (tests join schedulers in memory)."""

MissingBlob = Callable[[str, Digest], Awaitable[bool]]
"""``(namespace, digest) -> True`` while the blob is being fetched into the store (an origin's fetch on miss)."""

# Bytes of received pieces held in memory while they are checked and written. Below it, a request slot is
# given to the next piece as soon as a payload has arrived; above it, only once the piece is written.
PIECE_MEMORY = 8 << 20
DEFAULT_ANNOUNCE_INTERVAL = 5.0
# A torrent with fewer connections than it may have, whose last handout named peers it could not connect to,
# announces again this soon (or at the tracker's interval, if shorter) to find peers with room; a peer that
# answered BUSY, or could not be reached in time, is not dialled again for BUSY_BACKOFF.
UNDERCONNECTED_ANNOUNCE = 1.0
BUSY_BACKOFF = 5.0
MAX_ANNOUNCE_INTERVAL = 60.0


@attrs.frozen
class Stats:
    """Counters of one scheduler since it started (``attrs.asdict`` gives JSON)."""

    bytes_in: int = 0
    bytes_out: int = 0
    pieces_in: int = 0
    pieces_out: int = 0
    pieces_in_from_origins: int = 0
    pieces_in_from_agents: int = 0
    bytes_in_from_origins: int = 0
    bytes_in_from_agents: int = 0
    corrupt_pieces: int = 0
    duplicate_pieces: int = 0  # endgame copies that arrived after the first
    requests_timed_out: int = 0
    requests_refused: int = 0  # answered with ERROR
    requests_declined: int = 0  # pieces this seeder declined to send again (super_seed)
    downloads_completed: int = 0
    peers_unreachable: int = 0  # dialled peers blacklisted for being unreachable
    connections_evicted: int = 0  # connections closed for moving no piece
    torrents: int = 0
    connections: int = 0


class _PieceSink:
    """Receives one piece's payload into a buffer of the piece's size, allocated when the first byte arrives.

    The first byte also reserves the piece's size in the ingress bucket. Until the tokens are granted the
    connection stops reading (``pauseProducing``), so a capped daemon takes bytes off the wire at its rate, and
    the piece is not used (nor the next one asked for on that slot) before ``granted`` fires.
    """

    def __init__(self, size: int, bucket: TokenBucket | Unlimited, transport: object, buffers: _Buffers) -> None:
        self._size = size
        self._bucket = bucket
        self._transport = transport
        self._buffers = buffers
        self._buf: bytearray | None = None
        self._pos = 0
        self._reservation: Deferred[None] | None = None

    def write(self, chunk: Chunk) -> None:
        if self._buf is None:
            self._buf = self._buffers.take(self._size)
            self._reserve()
        end = self._pos + len(chunk)
        self._buf[self._pos : end] = chunk
        self._pos = end

    def _reserve(self) -> Deferred[None]:
        if self._reservation is None:
            self._reservation = self._bucket.reserve(self._size)
            if not self._reservation.called and hasattr(self._transport, "pauseProducing"):
                self._transport.pauseProducing()
                self._reservation.addBoth(self._resume)
        return self._reservation

    def _resume(self, result: object) -> object:
        if hasattr(self._transport, "resumeProducing"):
            self._transport.resumeProducing()
        return result

    async def granted(self) -> None:
        """Wait for the ingress tokens of this piece."""
        reservation = self._reserve()
        if not reservation.called:
            mine: Deferred[None] = Deferred()

            def relay(result: object) -> None:
                mine.callback(None)  # a failed reservation (the bucket closed at shutdown) is not an error here

            reservation.addBoth(relay)
            await mine

    def done(self) -> None:
        """The piece is written (or thrown away): its buffer may be reused."""
        if self._buf is not None:
            self._buffers.give(self._buf)
            self._buf = None

    def release(self) -> None:
        """The piece did not arrive: give its buffer and its tokens back (or stop waiting for the tokens)."""
        self.done()
        if self._reservation is None:
            return
        if self._reservation.called:
            self._bucket.refund(self._size)
        else:
            self._reservation.cancel()
            self._reservation.addErrback(lambda f: f.trap(CancelledError))

    def data(self) -> bytes | bytearray:
        return self._buf if self._buf is not None else b""


class _Buffers:
    """Piece buffers, reused rather than allocated for every piece (MiB-sized allocations freed at a high rate
    make the heap grow), and the bytes of the pieces being checked and written, which ``PIECE_MEMORY`` bounds."""

    KEEP = 4  # free buffers kept per size

    def __init__(self) -> None:
        self.checking = 0
        self._free: dict[int, list[bytearray]] = {}

    def take(self, size: int) -> bytearray:
        free = self._free.get(size)
        return free.pop() if free else bytearray(size)

    def give(self, buf: bytearray) -> None:
        free = self._free.setdefault(len(buf), [])
        if len(free) < self.KEEP:
            free.append(buf)


@attrs.define(eq=False)
class _Conn:
    peer_id: str
    protocol: PeerProtocol
    session: PeerSession
    origin: bool
    requests: dict[int, Deferred[int]] = attrs.field(factory=dict)


@attrs.define(eq=False)
class _Send:
    """A piece a peer asked us for, waiting in the outbox."""

    torrent: _Torrent
    conn: _Conn
    index: int
    seq: int
    cancelled: bool = False


@attrs.define(eq=False)
class _Torrent:
    namespace: str
    info: MetaInfo
    bitfield: Bitfield
    partial: PartialBlob | None
    dispatcher: Dispatcher | None
    last_active: float
    dials: Dials
    any_namespace: bool = False  # opened from the cache to serve a handshake: answers for any namespace
    conns: dict[str, _Conn] = attrs.field(factory=dict)
    waiters: list[Deferred[str]] = attrs.field(factory=list)
    announce_call: IDelayedCall | None = None
    writing: set[int] = attrs.field(factory=set)  # pieces being checked and written
    sent: dict[int, int] = attrs.field(factory=dict)  # copies of each piece served to peers
    last_sent: dict[int, tuple[float, str]] = attrs.field(factory=dict)  # piece -> (when, to whom)
    installing: bool = False
    installed: list[Deferred[None]] = attrs.field(factory=list)  # readers waiting for the install to end
    closed: bool = False

    @property
    def complete(self) -> bool:
        return self.partial is None


class Scheduler(Service):
    log = Logger()

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
    ) -> None:
        """``reactor`` gives the clock (and dials peers unless ``connect`` is given). Without ``announcer`` and
        ``metainfo`` this is an origin's scheduler: it only serves the blobs of ``store``. ``on_missing`` is told
        about a handshake for a blob the store lacks (an origin fetches it from its backend); while it answers
        True (being fetched) the peer hears BUSY, and tries again a few seconds later, rather than UNKNOWN_BLOB."""
        self._config = config
        self._clock: IReactorTime = reactor
        self._reactor = reactor
        self._store = store
        self._metainfo = metainfo
        self._announcer = announcer
        self._on_missing = on_missing
        ip, port = advertise if advertise is not None else config.advertised()
        self.peer_id = peer_id or config.the_peer_id()
        self._me = PeerInfo(self.peer_id, ip, port)
        self._peer_id_bytes = bytes.fromhex(self.peer_id)
        self._connect = connect or self._dial_tcp
        self._rng = rng or random.Random()
        self._torrents: dict[Digest, _Torrent] = {}
        self._starting: dict[Digest, list[Deferred[_Torrent]]] = {}
        self._counts: dict[str, int] = dict.fromkeys(attrs.fields_dict(Stats), 0)
        self._buffers = _Buffers()
        self._outbox: list[_Send] = []
        self._seq = itertools.count()
        self._serving = False
        self._in_flight: _Send | None = None
        bandwidth = config.bandwidth
        self._egress: TokenBucket | Unlimited = Unlimited()
        self._ingress: TokenBucket | Unlimited = Unlimited()
        if bandwidth.enabled:
            egress, ingress = bandwidth.egress_bits_per_sec / 8, bandwidth.ingress_bits_per_sec / 8
            self._egress = TokenBucket(egress, egress, clock=self._clock)
            self._ingress = TokenBucket(ingress, ingress, clock=self._clock)
        self._slots: Slots[_Conn] = Slots(
            max_conns=config.max_conns_per_torrent,
            per_address=config.max_conns_per_address,
            per_address_total=config.max_conns_per_address_total,
            grace=config.slot_grace,
            idle_after=config.slot_idle,
            exempt=config.address_limit_exempt,
        )
        self._preemption = LoopingCall(self._preempt)
        self._preemption.clock = self._clock

    # --- the API ------------------------------------------------------------------------------------------------

    @property
    def me(self) -> PeerInfo:
        """This peer as others dial it: its id and advertised address."""
        return self._me

    def factory(self) -> Factory:
        """The factory of the P2P listener."""
        return _Listener(self)

    def listener(self, reactor: Any, component: str) -> StreamServerEndpointService:
        """The P2P listener service (named ``p2p``) on ``config.listen``; it logs "<component> listening on ..."
        with this peer's id and advertised address."""
        return listen(
            self._config.listen,
            self.factory(),
            reactor=reactor,
            component=component,
            name="p2p",
            peer_id=self.peer_id,
            advertise=f"{self._me.ip}:{self._me.port}",
        )

    def stats(self) -> Stats:
        counts = dict(self._counts)
        counts["torrents"] = len(self._torrents)
        counts["connections"] = sum(len(t.conns) for t in self._torrents.values())
        return Stats(**counts)

    async def download(self, namespace: str, digest: Digest) -> str:
        """The path of the blob in the cache, downloading it first unless already there.

        Concurrent calls for one blob share one download. Raises ``BlobNotFound``, ``DownloadFailed``, or
        ``kraken.files.OutOfSpace`` when the disk is full (the partial blob is deleted)."""
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
            torrent = await self._start(namespace, digest)
        if torrent.complete:
            return path
        if torrent.closed:  # dropped while it was being opened (its install failed, or the scheduler stopped)
            raise DownloadFailed(f"the download of {digest} was dropped")
        waiter: Deferred[str] = Deferred(lambda d: torrent.waiters.remove(d) if d in torrent.waiters else None)
        torrent.waiters.append(waiter)
        return await waiter

    # --- Service ------------------------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._preemption.start(self._config.preemption_interval, now=False)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._preemption.running:
            self._preemption.stop()
        for torrent in list(self._torrents.values()):
            self._drop(torrent, DownloadFailed("the scheduler stopped"))
        for bucket in (self._egress, self._ingress):
            bucket.close()

    # --- torrents -----------------------------------------------------------------------------------------------

    async def _start(self, namespace: str, digest: Digest) -> _Torrent:
        """Create the download torrent for ``digest``, once however many ask at the same time."""
        # Each caller waits on its own Deferred, so cancelling one caller leaves the others waiting.
        waiters = self._starting.get(digest)
        first = waiters is None
        if waiters is None:
            waiters = self._starting[digest] = []
        mine: Deferred[_Torrent] = Deferred(lambda d: waiters.remove(d) if d in waiters else None)
        waiters.append(mine)
        if first:
            Deferred.fromCoroutine(self._create_download(namespace, digest)).addBoth(self._started, digest)
        return await mine

    def _started(self, result: _Torrent | Failure, digest: Digest) -> None:
        for d in self._starting.pop(digest, []):
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    async def _create_download(self, namespace: str, digest: Digest) -> _Torrent:
        if self._metainfo is None or self._announcer is None:
            raise BlobNotFound(f"{digest} is not here, and an origin does not download")
        info = await self._metainfo(namespace, digest)
        if info is None:
            raise BlobNotFound(f"no origin has {digest}")
        partial = await self._store.downloads.open(info)
        existing = self._torrents.get(digest)
        if existing is not None:
            return existing
        now = self._clock.seconds()
        dispatcher = Dispatcher(
            info.num_pieces,
            partial.have,
            pipeline_limit=self._config.pipeline_limit,
            request_timeout=self._config.request_timeout(info.piece_length),
            rng=self._rng,
        )
        torrent = _Torrent(namespace, info, partial.have, partial, dispatcher, now, self._dials())
        self._torrents[digest] = torrent
        self.log.info(
            "downloading {digest} ({bytes} bytes, {pieces} pieces, {have} on disk)",
            digest=str(digest),
            bytes=info.length,
            pieces=info.num_pieces,
            have=partial.have.count(),
        )
        if partial.complete():
            await self._finish(torrent)
        else:
            self._announce_soon(torrent, 0.0)
        return torrent

    async def _seeding_torrent(self, namespace: str, digest: Digest) -> _Torrent | None:
        """The torrent to serve ``digest`` from: in memory, or re-opened from the cache."""
        torrent = self._torrents.get(digest)
        if torrent is not None:
            return torrent
        info = await self._store.metainfo(digest)
        if info is None:
            return None
        torrent = self._torrents.get(digest)  # opened meanwhile
        if torrent is None:
            full = Bitfield.full(info.num_pieces)
            torrent = _Torrent(namespace, info, full, None, None, self._clock.seconds(), self._dials(), True)
            self._torrents[digest] = torrent
        return torrent

    def _dials(self) -> Dials:
        c = self._config
        return Dials(
            max_conns=c.max_conns_per_torrent,
            max_pending=c.max_pending_dials,
            hold=c.dial_hold,
            busy_backoff=BUSY_BACKOFF,
            blacklist=c.blacklist,
            blacklist_max=c.blacklist_max,
        )

    def _drop(self, torrent: _Torrent, error: Exception | None) -> None:
        """Forget the torrent: close its connections, stop announcing, fail its waiters with ``error``."""
        torrent.closed = True
        if self._torrents.get(torrent.info.digest) is torrent:
            del self._torrents[torrent.info.digest]
        if torrent.announce_call is not None and torrent.announce_call.active():
            torrent.announce_call.cancel()
        torrent.announce_call = None
        for conn in list(torrent.conns.values()):
            conn.session.close("torrent closed")
        waiters, torrent.waiters = torrent.waiters, []
        for d in waiters:
            d.errback(error or DownloadFailed("the download was dropped"))

    def _out_of_space(self, torrent: _Torrent, error: BaseException) -> None:
        """The disk is full: fail the download (its waiters get ``OutOfSpace``) and delete its partial blob.
        Nothing is remembered: the next download of it starts afresh."""
        if torrent.closed:
            return  # another piece of it met the full disk first
        digest = torrent.info.digest
        self.log.warn("no space left to download {digest}: cancelled ({error})", digest=str(digest), error=str(error))
        self._drop(torrent, OutOfSpace(f"downloading {digest}", error))
        ensureDeferred(self._store.downloads.discard(digest)).addErrback(
            lambda f: self.log.failure("discarding {digest} failed", f, digest=str(digest))
        )

    def _preempt(self) -> None:
        """TTIs of torrents and connections, and expiry of blacklist entries (every ``preemption_interval``)."""
        now = self._clock.seconds()
        for torrent in list(self._torrents.values()):
            torrent.dials.expire(now)
            pending, busy = torrent.dials.holding(now), self._busy(torrent)
            for conn in self._slots.idle(torrent, now, complete=torrent.complete, pending=pending, busy=busy):
                self._evict(torrent, conn, f"no piece moved for {self._config.slot_idle:g} s")
            idle = now - torrent.last_active
            if torrent.complete and idle > self._config.seeder_tti and not torrent.installing:
                self.log.debug("dropping idle seeder torrent {digest}", digest=str(torrent.info.digest))
                self._drop(torrent, None)
            elif not torrent.complete and idle > self._config.leecher_tti and not torrent.installing:
                self.log.warn(
                    "download of {digest} stalled for {seconds:.0f} s: cancelled",
                    digest=str(torrent.info.digest),
                    seconds=idle,
                )
                self._drop(torrent, DownloadFailed(f"no piece of {torrent.info.digest} arrived for {idle:.0f} s"))
                ensureDeferred(self._store.downloads.discard(torrent.info.digest)).addErrback(
                    lambda f: self.log.failure("discarding a stalled download failed", f)
                )

    # --- announcing and dialling ----------------------------------------------------------------------------

    def _announce_soon(self, torrent: _Torrent, delay: float) -> None:
        if torrent.closed or self._announcer is None:
            return
        if torrent.announce_call is not None and torrent.announce_call.active():
            torrent.announce_call.cancel()
        torrent.announce_call = self._clock.callLater(delay, self._announce, torrent)

    def _announce(self, torrent: _Torrent) -> None:
        torrent.announce_call = None
        Deferred.fromCoroutine(self._announce_once(torrent)).addErrback(
            lambda f: self.log.failure("announce loop failed", f)
        )

    async def _announce_once(self, torrent: _Torrent) -> None:
        assert self._announcer is not None
        complete = torrent.complete
        me = attrs.evolve(self._me, complete=complete)
        interval = DEFAULT_ANNOUNCE_INTERVAL
        # Best effort: a report lost with a failed announce is not sent again.
        unreachable = torrent.dials.take_reports()
        try:
            peers, interval = await self._announcer(
                me, torrent.namespace, torrent.info.digest, torrent.info.info_hash, unreachable=unreachable
            )
        except CancelledError:
            raise
        except Exception as e:
            self.log.warn("announce of {digest} failed: {error}", digest=str(torrent.info.digest), error=str(e))
            peers = []
        if torrent.closed or complete:
            return  # a complete torrent announces once and then stops
        if not 0 < interval <= MAX_ANNOUNCE_INTERVAL:
            interval = DEFAULT_ANNOUNCE_INTERVAL
        self._dial_some(torrent, peers)
        if not torrent.complete:
            linked = len(torrent.conns) + torrent.dials.pending_count()
            others = sum(1 for p in peers if p.peer_id != self.peer_id)
            if linked < self._config.max_conns_per_torrent and others > linked:
                # Peers were handed out that are busy or backed off: ask again soon for ones with room.
                interval = min(interval, UNDERCONNECTED_ANNOUNCE)
            self._announce_soon(torrent, interval)

    def _dial_some(self, torrent: _Torrent, peers: list[PeerInfo]) -> None:
        now, dials = self._clock.seconds(), torrent.dials
        room = dials.room(len(torrent.conns), now)
        for peer in sorted(peers, key=lambda p: dials.strikes(p.peer_id) > 0):  # peers that failed us go last
            if room <= 0:
                return
            if (
                peer.peer_id == self.peer_id
                or peer.peer_id in torrent.conns
                or dials.pending(peer.peer_id)
                or dials.blocked(peer.peer_id, now)
            ):
                continue
            dials.started(peer.peer_id, now)
            room -= 1
            Deferred.fromCoroutine(self._dial(torrent, peer)).addErrback(
                lambda f: self.log.failure("dialling a peer failed", f)
            )

    async def _dial(self, torrent: _Torrent, peer: PeerInfo) -> None:
        factory = _Dialer(self._session_factory(torrent, expected=peer.peer_id, initiator=True))
        session: PeerSession | None = None
        try:
            protocol = await self._connect(peer, factory)
            assert isinstance(protocol, PeerProtocol) and protocol.session is not None
            session = protocol.session
            await session.when_handshaken()
        except CancelledError:
            raise
        except Exception as e:
            if peer.peer_id in torrent.conns:
                torrent.dials.cancelled(peer.peer_id)
                return  # a lost race with its own dial to us
            outcome = _outcome(e, session)
            wait, unreachable = torrent.dials.failed(peer.peer_id, outcome, self._clock.seconds())
            if unreachable:
                self._counts["peers_unreachable"] += 1
                self.log.info(
                    "peer {peer} at {peer_addr} unreachable for {digest}: {error}; not dialled for {seconds:g} s",
                    peer=peer.peer_id[:12], peer_addr=f"{peer.ip}:{peer.port}", digest=str(torrent.info.digest),
                    error=str(e) or type(e).__name__, seconds=wait,
                )  # fmt: skip
            elif outcome is Outcome.FAULT:
                self._log_blacklisted(torrent, peer.peer_id, f"dial failed: {e}")
            return
        self._opened(torrent, protocol, session, origin=peer.origin, address=peer.ip)

    def _dial_tcp(self, peer: PeerInfo, factory: Factory) -> Deferred[Protocol]:
        timeout = self._config.handshake_timeout
        endpoint_class = TCP6ClientEndpoint if ":" in peer.ip else TCP4ClientEndpoint
        endpoint = endpoint_class(self._reactor, peer.ip, peer.port, timeout=timeout)
        return cast("Deferred[Protocol]", endpoint.connect(factory))

    def _blacklist(self, torrent: _Torrent, peer_id: str, why: str) -> None:
        torrent.dials.failed(peer_id, Outcome.FAULT, self._clock.seconds())
        self._log_blacklisted(torrent, peer_id, why)

    def _log_blacklisted(self, torrent: _Torrent, peer_id: str, why: str) -> None:
        self.log.info(
            "blacklisting peer {peer} for {digest}: {why}", peer=peer_id[:12], digest=str(torrent.info.digest), why=why
        )

    # --- accepting ------------------------------------------------------------------------------------------

    def _accept(self, handshake: Handshake, address: str | None) -> Deferred[SessionFactory | Error]:
        return Deferred.fromCoroutine(self._decide(handshake, address))

    async def _decide(self, handshake: Handshake, address: str | None = None) -> SessionFactory | Error:
        """Admit an inbound handshake from ``address`` (the remote IP, None if unknown), or name the refusal."""
        if not self.running:
            return Error(ErrorCode.BUSY, None, "shutting down")
        digest = Digest(handshake.digest.hex())
        torrent = await self._seeding_torrent(handshake.namespace, digest)
        if torrent is None and self._on_missing is not None:
            try:
                fetching = await self._on_missing(handshake.namespace, digest)
            except CancelledError:
                raise
            except Exception:
                self.log.failure("asking for missing blob {digest} failed", digest=str(digest))
                fetching = False
            if fetching:
                return Error(ErrorCode.BUSY, None, f"fetching {digest} from storage")
            torrent = await self._seeding_torrent(handshake.namespace, digest)  # it may have landed meanwhile
        if torrent is None or torrent.closed:
            return Error(ErrorCode.UNKNOWN_BLOB, None, f"no {digest} here")
        if handshake.info_hash.hex() != torrent.info.info_hash:
            return Error(ErrorCode.UNKNOWN_BLOB, None, "info hash differs")
        remote, now = handshake.peer_id.hex(), self._clock.seconds()
        if not torrent.any_namespace and handshake.namespace != torrent.namespace:
            why = f"namespace {handshake.namespace!r} differs"[: MAX_ERROR_MESSAGE // 4]
            self._log_refused(torrent, remote, address, why)
            return Error(ErrorCode.UNKNOWN_BLOB, None, why)
        if torrent.dials.blocked(remote, now):
            return Error(ErrorCode.BUSY, None, "blacklisted")
        if remote in torrent.conns:
            return Error(ErrorCode.BUSY, None, "already connected")
        # Both sides dialled each other: keep the connection opened by the smaller peer id.
        if torrent.dials.pending(remote) and remote > self.peer_id:
            return Error(ErrorCode.BUSY, None, "already dialling")
        pending, busy = torrent.dials.holding(now), self._busy(torrent)
        admission = self._slots.admit(torrent, address, now, pending=pending, busy=busy)
        if not admission.admit:
            if admission.limited:
                self._log_refused(torrent, remote, address, admission.reason)
            return Error(ErrorCode.BUSY, None, admission.reason)
        if admission.evict is not None:
            self._evict(torrent, admission.evict, admission.reason)
        make = self._session_factory(torrent, expected=None, initiator=False, namespace=handshake.namespace)

        def session(connection: IPeerConnection) -> PeerSession:
            s = make(connection)
            protocol = cast(PeerProtocol, connection)
            s.when_handshaken().addCallbacks(
                lambda _: self._opened(torrent, protocol, s, origin=False, address=address), lambda _: None
            )
            return s

        return session

    # --- connections ------------------------------------------------------------------------------------------

    def _session_factory(
        self, torrent: _Torrent, *, expected: str | None, initiator: bool, namespace: str | None = None
    ) -> SessionFactory:
        observer = _Observer(self, torrent)

        def make(protocol: IPeerConnection) -> PeerSession:
            return PeerSession(
                protocol,
                observer,
                clock=self._clock,
                metainfo=torrent.info,
                namespace=torrent.namespace if namespace is None else namespace,
                peer_id=self._peer_id_bytes,
                bitfield=torrent.bitfield,
                initiator=initiator,
                expected_peer_id=None if expected is None else bytes.fromhex(expected),
                handshake_timeout=self._config.handshake_timeout,
                idle_timeout=self._config.conn_tti,
                request_timeout=self._config.request_timeout(torrent.info.piece_length),
            )

        return make

    def _log_refused(self, torrent: _Torrent, peer_id: str, address: str | None, why: str) -> None:
        self.log.info(
            "refusing peer {peer} from {peer_addr} for {digest}: {why}",
            peer=peer_id[:12], peer_addr=address, digest=str(torrent.info.digest), why=why,
        )  # fmt: skip

    def _busy(self, torrent: _Torrent) -> set[_Conn]:
        """Connections of ``torrent`` that wait on this side or that it waits on: a piece asked of the peer, or a
        request of the peer's queued here while its connection can take it."""
        busy = {conn for conn in torrent.conns.values() if conn.requests}
        busy.update(s.conn for s in self._outbox if s.torrent is torrent and s.conn.protocol.writable)
        if self._in_flight is not None and self._in_flight.torrent is torrent:
            busy.add(self._in_flight.conn)
        return busy

    def _evict(self, torrent: _Torrent, conn: _Conn, why: str) -> None:
        """Close a connection that holds a slot without moving pieces; its peer is not admitted again for a few
        seconds."""
        self._counts["connections_evicted"] += 1
        self.log.info(
            "evicting peer {peer} from {digest}: {why}",
            peer=conn.peer_id[:12],
            digest=str(torrent.info.digest),
            why=why,
        )
        self._detach(torrent, conn)
        torrent.dials.failed(conn.peer_id, Outcome.BUSY, self._clock.seconds())
        conn.session.close(f"evicted: {why}", error=Error(ErrorCode.BUSY, None, why[: MAX_ERROR_MESSAGE // 4]))

    def _opened(
        self,
        torrent: _Torrent,
        protocol: PeerProtocol,
        session: PeerSession,
        *,
        origin: bool,
        address: str | None = None,
    ) -> None:
        assert session.remote is not None
        peer_id = session.remote.peer_id.hex()
        torrent.dials.connected(peer_id)
        if torrent.closed or peer_id in torrent.conns:
            session.close("duplicate connection" if not torrent.closed else "torrent closed")
            return
        if torrent.complete and session.remote_bitfield.complete():
            session.close("both sides are complete")
            return
        if len(torrent.conns) >= self._config.max_conns_per_torrent:
            session.close("at capacity")  # a dial that completed after its slot hold, once the torrent filled
            return
        conn = _Conn(peer_id, protocol, session, origin)
        torrent.conns[peer_id] = conn
        self._slots.opened(conn, torrent, address, self._clock.seconds())
        session.when_closed().addCallback(self._closed, torrent, conn)
        if torrent.dispatcher is not None:
            limit = self._config.origin_pipeline_limit if origin else self._config.pipeline_limit
            torrent.dispatcher.peer_joined(peer_id, session.remote_bitfield, pipeline_limit=limit)
            self._request_more(torrent, conn)

    def _closed(self, closed: Closed, torrent: _Torrent, conn: _Conn) -> None:
        if closed.violation:
            self._blacklist(torrent, conn.peer_id, closed.reason)
        self._detach(torrent, conn)

    def _detach(self, torrent: _Torrent, conn: _Conn) -> None:
        """Forget a connection that is closing: its slot, its queued sends, its requests."""
        if torrent.conns.get(conn.peer_id) is not conn:
            return
        del torrent.conns[conn.peer_id]
        self._slots.closed(conn)
        self._outbox = [send for send in self._outbox if send.conn is not conn]
        if torrent.dispatcher is not None:
            torrent.dispatcher.peer_left(conn.peer_id)
            for other in list(torrent.conns.values()):  # its pieces are back in the pool
                self._request_more(torrent, other)

    # --- downloading --------------------------------------------------------------------------------------------

    def _request_more(self, torrent: _Torrent, conn: _Conn) -> None:
        dispatcher = torrent.dispatcher
        if dispatcher is None or torrent.conns.get(conn.peer_id) is not conn:
            return
        for index in dispatcher.next_requests(conn.peer_id, self._clock.seconds()):
            Deferred.fromCoroutine(self._fetch(torrent, conn, index)).addErrback(
                lambda f: self.log.failure("fetching a piece failed", f)
            )

    async def _fetch(self, torrent: _Torrent, conn: _Conn, index: int) -> None:
        dispatcher, partial = torrent.dispatcher, torrent.partial
        assert dispatcher is not None and partial is not None
        size = torrent.info.piece_size(index)
        buffer = _PieceSink(size, self._ingress, conn.protocol.transport, self._buffers)
        try:
            if torrent.conns.get(conn.peer_id) is not conn or index not in dispatcher.outstanding(conn.peer_id):
                return  # gone meanwhile
            request = conn.session.request_piece(index, buffer.write)
            conn.requests[index] = request
            try:
                await request
            finally:
                conn.requests.pop(index, None)
            await buffer.granted()
        except CancelledError:
            buffer.release()
            return  # another peer delivered it first, or the scheduler stopped
        except (PeerDisconnected, SessionNotOpen):
            buffer.release()
            return  # peer_left gave its requests back
        except (PieceRequestFailed, TimeoutError) as e:
            buffer.release()
            now = self._clock.seconds()
            timed_out = not isinstance(e, PieceRequestFailed)
            self._counts["requests_timed_out" if timed_out else "requests_refused"] += 1
            if timed_out:
                until = now + self._config.request_timeout(torrent.info.piece_length)
            elif isinstance(e, PieceRequestFailed) and e.code is ErrorCode.PIECE_UNAVAILABLE:  # ask again later
                until = now + self._config.request_timeout(torrent.info.piece_length) / 4
            else:
                until = float("inf")
            dispatcher.piece_failed(conn.peer_id, index, until=until, slow=timed_out)
            self.log.debug("piece {piece} from {peer}: {error}", piece=index, peer=conn.peer_id[:12], error=str(e))
            self._request_all(torrent)
            return
        if index in torrent.writing or torrent.bitfield[index]:
            self._counts["duplicate_pieces"] += 1
            buffer.done()
            return  # an endgame duplicate: the first copy is being (or was) written; it frees this request too
        torrent.writing.add(index)
        if self._buffers.checking + size <= PIECE_MEMORY:
            # Its slot is free while the piece is checked and written, unless too many pieces wait for that.
            dispatcher.piece_arrived(conn.peer_id, index)
            self._request_more(torrent, conn)
        self._buffers.checking += size
        try:
            written = await partial.write_piece(index, buffer.data())
        except PieceCorrupt:
            self._counts["corrupt_pieces"] += 1
            dispatcher.piece_failed(conn.peer_id, index)
            conn.session.close(f"piece {index} does not match its SHA-256", violation=True)
            return
        except Exception as e:
            if is_out_of_space(e) or torrent.closed:
                self._out_of_space(torrent, e)  # a no-op once the torrent is closed
                return
            self.log.failure("writing piece {piece} of {digest} failed", piece=index, digest=str(torrent.info.digest))
            dispatcher.piece_failed(conn.peer_id, index, until=self._clock.seconds() + self._config.blacklist)
            self._request_all(torrent)
            return
        finally:
            torrent.writing.discard(index)
            self._buffers.checking -= size
            buffer.done()
        for other in dispatcher.piece_received(conn.peer_id, index):
            pending = torrent.conns[other].requests.get(index) if other in torrent.conns else None
            if pending is not None:
                pending.cancel()
        if written:
            self._piece_arrived(torrent, conn, index, size)
        if dispatcher.complete():
            if not torrent.installing:
                await self._finish(torrent)
        else:
            self._request_all(torrent)  # this peer's slot, and those of peers whose copy was a duplicate

    def _piece_arrived(self, torrent: _Torrent, conn: _Conn, index: int, size: int) -> None:
        torrent.last_active = self._clock.seconds()
        self._slots.progress(conn, torrent.last_active)
        source = "origins" if conn.origin else "agents"
        for key, amount in (
            ("pieces_in", 1),
            ("bytes_in", size),
            (f"pieces_in_from_{source}", 1),
            (f"bytes_in_from_{source}", size),
        ):
            self._counts[key] += amount
        for other in torrent.conns.values():
            if other is not conn:
                other.session.send_have(index)
        have, pieces = torrent.bitfield.count(), torrent.info.num_pieces
        if have < pieces and have * 4 // pieces > (have - 1) * 4 // pieces:  # a quarter more is on disk
            self.log.info(
                "download of {digest}: {have} of {pieces} pieces",
                digest=str(torrent.info.digest),
                have=have,
                pieces=pieces,
            )

    def _request_all(self, torrent: _Torrent) -> None:
        for conn in list(torrent.conns.values()):
            self._request_more(torrent, conn)

    async def _finish(self, torrent: _Torrent) -> None:
        """Every piece is here: move the blob into the cache, tell the peers and the tracker, wake the waiters."""
        assert torrent.partial is not None
        torrent.installing = True
        try:
            await self._store.downloads.finish(torrent.partial)
        except CancelledError:
            raise
        except Exception as e:
            if is_out_of_space(e):
                self._out_of_space(torrent, e)
                return
            self.log.failure("installing {digest} failed", digest=str(torrent.info.digest))
            self._drop(torrent, DownloadFailed(f"installing {torrent.info.digest} failed: {e}"))
            return
        finally:
            torrent.installing = False
            readers, torrent.installed = torrent.installed, []
            for d in readers:
                d.callback(None)
        torrent.partial = None
        torrent.dispatcher = None
        torrent.last_active = self._clock.seconds()
        self._counts["downloads_completed"] += 1
        self.log.info("downloaded {digest}", digest=str(torrent.info.digest))
        for conn in list(torrent.conns.values()):
            for request in list(conn.requests.values()):
                request.cancel()
            if conn.session.remote_bitfield.complete():
                conn.session.close("both sides are complete")
            else:
                conn.session.send_complete()
        downloads, torrent.waiters = torrent.waiters, []
        path = self._store.blob_path(torrent.info.digest)
        for waiter in downloads:
            waiter.callback(path)
        self._announce_soon(torrent, 0.0)

    # --- serving ----------------------------------------------------------------------------------------------

    def _piece_requested(self, torrent: _Torrent, session: PeerSession, index: int) -> None:
        conn = self._conn_of(torrent, session)
        if conn is None:
            return
        if not torrent.bitfield[index]:
            session.send_unavailable(index, "piece not here yet")
            return
        self._outbox.append(_Send(torrent, conn, index, next(self._seq)))
        if not self._serving:
            self._serving = True
            Deferred.fromCoroutine(self._serve()).addErrback(lambda f: self.log.failure("serving pieces failed", f))

    async def _serve(self) -> None:
        """Send the outbox's pieces, one at a time through the egress bucket.

        Of the requests whose connection can take more, the piece fewest of our peers have goes first, then the
        one this daemon has served the fewest times: a seeder facing many leechers sends every piece once before
        it sends any twice, so the swarm holds a whole copy as early as possible and trades the rest among
        itself, and what is rare around a peer leaves it first. With ``super_seed`` a complete
        torrent also declines (``PIECE_UNAVAILABLE``) a piece it sent within the last request timeout to a peer
        that is still connected: that peer is passing it on, and the requester asks it again later if it must.
        The time counts from when the piece left the write buffer, and an origin declines such a piece whatever
        the time until it has sent every piece once: behind a link that is slower than its peers' demand,
        each copy it sends twice delays the moment the swarm holds the whole blob.
        """
        try:
            while self._outbox and self.running:
                send = self._pick()
                if send is None:
                    if self._outbox:
                        await self._any_writable()
                    continue
                self._outbox.remove(send)
                if self._recently_seeded(send):
                    self._counts["requests_declined"] += 1
                    send.conn.session.send_unavailable(send.index, "recently seeded to a peer: ask the swarm")
                    continue
                self._in_flight = send
                size = send.torrent.info.piece_size(send.index)
                await self._egress.reserve(size)
                if send.cancelled or send.torrent.conns.get(send.conn.peer_id) is not send.conn:
                    self._egress.refund(size)
                    continue
                data = await self._read_piece(send.torrent, send.index)
                send.conn.session.send_piece(send.index, data)
                send.torrent.sent[send.index] = send.torrent.sent.get(send.index, 0) + 1
                if send.torrent.sent[send.index] == 1 and len(send.torrent.sent) == send.torrent.info.num_pieces:
                    self.log.info("sent every piece of {digest} once", digest=str(send.torrent.info.digest))
                self._mark_sent(send)
                send.torrent.last_active = self._clock.seconds()
                self._slots.progress(send.conn, send.torrent.last_active)
                self._counts["pieces_out"] += 1
                self._counts["bytes_out"] += size
        except CancelledError:
            pass
        finally:
            self._in_flight = None
            self._serving = False

    def _mark_sent(self, send: _Send) -> None:
        """Remember whom a piece went to, and when it left: while it waits in the connection's write buffer it
        is still on its way (behind a slow link that is seconds per piece), so its time is taken once the
        buffer has drained."""
        torrent, index = send.torrent, send.index
        entry = torrent.last_sent[index] = (float("inf"), send.conn.peer_id)

        def left(_: object) -> None:
            if torrent.last_sent.get(index) is entry:
                torrent.last_sent[index] = (self._clock.seconds(), entry[1])

        send.conn.protocol.when_writable().addBoth(left)

    def _recently_seeded(self, send: _Send) -> bool:
        torrent = send.torrent
        if not self._config.super_seed or not torrent.complete or send.index not in torrent.last_sent:
            return False
        when, peer = torrent.last_sent[send.index]
        if peer == send.conn.peer_id or peer not in torrent.conns:
            return False
        if self._announcer is None and len(torrent.sent) < torrent.info.num_pieces:
            return True  # an origin sends every piece once before it sends any twice to peers still connected
        return self._clock.seconds() - when < self._config.request_timeout(torrent.info.piece_length)

    def _pick(self) -> _Send | None:
        """The next piece to send: the one fewest of our peers have, then the one we have served fewest times,
        then the oldest request; None while every connection with a request waiting has a full write buffer.
        Requests of closed connections are dropped, and those of connections whose transport is going: it stops
        its producer (failing ``when_writable``) before the protocol hears of the loss, and a request kept then
        would be waited for again at once, for ever."""
        self._outbox = [
            s for s in self._outbox if s.torrent.conns.get(s.conn.peer_id) is s.conn and not s.conn.protocol.lost
        ]
        ready = [s for s in self._outbox if s.conn.protocol.writable]
        if not ready:
            return None
        holders: dict[tuple[int, int], int] = {}

        def spread(send: _Send) -> int:
            """How many of this torrent's peers already have the piece: the fewer, the sooner it should go."""
            key = (id(send.torrent), send.index)
            if key not in holders:
                holders[key] = sum(c.session.remote_bitfield[send.index] for c in send.torrent.conns.values())
            return holders[key]

        return min(ready, key=lambda s: (spread(s), s.torrent.sent.get(s.index, 0), s.seq))

    async def _any_writable(self) -> None:
        waits = [s.conn.protocol.when_writable() for s in self._outbox]
        try:
            await defer.race(waits)
        except defer.FailureGroup:
            pass  # every one of those connections is gone: _pick drops their requests

    async def _read_piece(self, torrent: _Torrent, index: int) -> bytes:
        info = torrent.info
        partial = torrent.partial
        if partial is not None:
            try:
                return await partial.read_piece(index)
            except FileNotFoundError:
                # Being moved into the cache: read it there once it has landed.
                if torrent.installing:
                    landed: Deferred[None] = Deferred()
                    torrent.installed.append(landed)
                    await landed
        return await self._store.read_range(info.digest, info.piece_offset(index), info.piece_size(index))

    def _piece_cancelled(self, torrent: _Torrent, session: PeerSession, index: int) -> None:
        conn = self._conn_of(torrent, session)
        if conn is None:
            return
        self._outbox = [s for s in self._outbox if not (s.conn is conn and s.index == index)]
        if self._in_flight is not None and self._in_flight.conn is conn and self._in_flight.index == index:
            self._in_flight.cancelled = True

    def _peer_has(self, torrent: _Torrent, session: PeerSession, index: int) -> None:
        conn = self._conn_of(torrent, session)
        if conn is not None and torrent.dispatcher is not None:
            torrent.dispatcher.peer_has(conn.peer_id, index)
            self._request_more(torrent, conn)

    def _peer_complete(self, torrent: _Torrent, session: PeerSession) -> None:
        conn = self._conn_of(torrent, session)
        if conn is None:
            return
        if torrent.complete:
            session.close("both sides are complete")
        elif torrent.dispatcher is not None:
            torrent.dispatcher.peer_complete(conn.peer_id)
            self._request_more(torrent, conn)

    def _conn_of(self, torrent: _Torrent, session: PeerSession) -> _Conn | None:
        if session.remote is None:
            return None
        conn = torrent.conns.get(session.remote.peer_id.hex())
        return conn if conn is not None and conn.session is session else None


@implementer(IPeerSessionObserver)
class _Observer:
    """A torrent's ``IPeerSessionObserver``: forwards to the scheduler."""

    def __init__(self, scheduler: Scheduler, torrent: _Torrent) -> None:
        self._s = scheduler
        self._t = torrent

    def piece_requested(self, session: PeerSession, index: int) -> None:
        self._s._piece_requested(self._t, session, index)

    def piece_cancelled(self, session: PeerSession, index: int) -> None:
        self._s._piece_cancelled(self._t, session, index)

    def peer_has(self, session: PeerSession, index: int) -> None:
        self._s._peer_has(self._t, session, index)

    def peer_complete(self, session: PeerSession) -> None:
        self._s._peer_complete(self._t, session)


class _Dialer(Factory):
    def __init__(self, make: SessionFactory) -> None:
        self._make = make

    def buildProtocol(self, addr: object) -> PeerProtocol:
        return PeerProtocol(self._make)


class _Listener(Factory):
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def buildProtocol(self, addr: object) -> PeerProtocol:
        """``addr``: the remote address; its ``host`` (if any) counts against the per-address limits."""
        s = self._scheduler
        host = getattr(addr, "host", None)
        address = host if isinstance(host, str) else None
        return PeerProtocol.accepting(
            lambda handshake: s._accept(handshake, address),
            clock=s._clock,
            handshake_timeout=s._config.handshake_timeout,
        )


def _outcome(error: Exception, session: PeerSession | None) -> Outcome:
    """What a failed dial says about the peer (``Dials``)."""
    if isinstance(error, PeerDisconnected) and error.refused is not None:
        return Outcome.BUSY if error.refused is ErrorCode.BUSY else Outcome.FAULT
    # A connect or handshake that timed out, or found no route (unanswered ARP), is most often a saturated link
    # dropping the SYN or the answer: Dials forgives the first one.
    if isinstance(error, ConnectTimeout | NoRouteError):
        return Outcome.LATE
    if isinstance(error, PeerDisconnected) and error.reason == HANDSHAKE_TIMED_OUT:
        return Outcome.LATE
    if isinstance(error, ConnectionRefusedError | ConnectError):
        return Outcome.REFUSED
    if (
        isinstance(error, PeerDisconnected)
        and session is not None
        and not (session.closed and session.closed.violation)
    ):
        return Outcome.REFUSED  # accepted, then closed before any handshake
    return Outcome.FAULT


__all__ = [
    "Announcer", "BlobNotFound", "Connector", "DownloadFailed", "MetaInfoSource", "MissingBlob", "Scheduler", "Stats",
]  # fmt: skip
