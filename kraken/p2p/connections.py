"""Which connections a scheduler keeps: admission of inbound handshakes, the life of every connection (opened,
closed, evicted) and the blacklists, on top of the pure ``Slots`` (kraken/p2p/slots.py) and each torrent's
``Dials`` (kraken/p2p/dials.py).

Owns: the P2P listener's factory, the sessions of a torrent's connections (``session_factory``, used for dials
too), deciding on an inbound handshake (``accept``), a connection's registration once its handshake completes
(``opened``) and its removal (``detach``), eviction of connections that move no piece, and blacklisting. What the
piece traffic needs to hear (a connection joined or left, which connections are busy, the session observer) goes
through ``Traffic``, which the scheduler wires to the leech and seed drivers.

Any side accepts connections for a blob it holds, whole or in part: the handshake names the blob, and a completed
torrent dropped from memory (seeder TTI) is re-opened from the cache. An origin told of a handshake for a blob it
lacks (``on_missing``) answers BUSY while it fetches the blob from its backend.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast
from typing import Protocol as TypingProtocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from kraken.core import Digest
from kraken.p2p.config import P2PConfig
from kraken.p2p.dials import Outcome
from kraken.p2p.protocol import PeerProtocol, SessionFactory
from kraken.p2p.session import Closed, IPeerConnection, IPeerSessionObserver, PeerSession
from kraken.p2p.slots import Slots, far_behind
from kraken.p2p.torrent import LOG_NAMESPACE, Conn, Torrent, Torrents
from kraken.p2p.wire import MAX_ERROR_MESSAGE, Error, ErrorCode, Handshake

log = Logger(namespace=LOG_NAMESPACE)

MissingBlob = Callable[[str, Digest], Awaitable[bool]]
"""``(namespace, digest) -> True`` while the blob is being fetched into the store (an origin's fetch on miss)."""


class Traffic(TypingProtocol):
    """What the connections tell the piece traffic (the leech and seed drivers)."""

    def joined(self, torrent: Torrent, conn: Conn) -> None:
        """``conn`` is open: ask it for pieces."""

    def left(self, torrent: Torrent, conn: Conn) -> None:
        """``conn`` is closing: forget its requests, both ways."""

    def busy(self, torrent: Torrent) -> set[Conn]:
        """Connections of ``torrent`` that wait on this side or that it waits on (never evicted for idling)."""

    def observer(self, torrent: Torrent) -> IPeerSessionObserver:
        """What hears the sessions of ``torrent``."""


class Connections:
    """The connections of one scheduler's torrents (see the module docstring)."""

    def __init__(
        self,
        config: P2PConfig,
        *,
        clock: IReactorTime,
        peer_id: str,
        torrents: Torrents,
        traffic: Traffic,
        running: Callable[[], bool],
        on_missing: MissingBlob | None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._peer_id = peer_id
        self._peer_id_bytes = bytes.fromhex(peer_id)
        self._torrents = torrents
        self._counts = torrents.counts
        self._traffic = traffic
        self._running = running
        self._on_missing = on_missing
        c = config
        self.slots: Slots[Conn] = Slots(
            max_conns=c.max_conns_per_torrent, per_address=c.max_conns_per_address,
            per_address_total=c.max_conns_per_address_total, grace=c.slot_grace, idle_after=c.slot_idle,
            exempt=c.address_limit_exempt, catch_up=c.catch_up_conns,
        )  # fmt: skip

    def factory(self) -> Factory:
        """The factory of the P2P listener."""
        return _Listener(self)

    # --- accepting ------------------------------------------------------------------------------------------

    def accept(self, handshake: Handshake, address: str | None) -> Deferred[SessionFactory | Error]:
        """Admit an inbound handshake from ``address`` (the remote IP, None if unknown), or name the refusal."""
        return Deferred.fromCoroutine(self._decide(handshake, address))

    async def _decide(self, handshake: Handshake, address: str | None) -> SessionFactory | Error:
        if not self._running():
            return Error(ErrorCode.BUSY, None, "shutting down")
        torrent = await self._find(handshake)
        if isinstance(torrent, Error):
            return torrent
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
        if torrent.dials.pending(remote) and remote > self._peer_id:
            return Error(ErrorCode.BUSY, None, "already dialling")
        pending, busy = torrent.dials.holding(now), self._traffic.busy(torrent)
        behind = far_behind(torrent.bitfield.count(), handshake.bitfield.count(), len(torrent.bitfield))
        admission = self.slots.admit(torrent, address, now, pending=pending, busy=busy, behind=behind)
        if not admission.admit:
            if admission.limited:
                self._log_refused(torrent, remote, address, admission.reason)
            return Error(ErrorCode.BUSY, None, admission.reason)
        if admission.evict is not None:
            self.evict(torrent, admission.evict, admission.reason)
        make = self.session_factory(torrent, expected=None, initiator=False, namespace=handshake.namespace)

        def session(connection: IPeerConnection) -> PeerSession:
            s = make(connection)
            protocol = cast(PeerProtocol, connection)
            s.when_handshaken().addCallbacks(
                lambda _: self.opened(torrent, protocol, s, origin=False, address=address, admitted=True),
                lambda _: None,
            )
            return s

        return session

    async def _find(self, handshake: Handshake) -> Torrent | Error:
        """The torrent a handshake asks for, or the refusal: BUSY while an origin fetches the blob."""
        digest = Digest(handshake.digest.hex())
        torrent = await self._torrents.serving(handshake.namespace, digest)
        if torrent is None and self._on_missing is not None:
            try:
                fetching = await self._on_missing(handshake.namespace, digest)
            except CancelledError:
                raise
            except Exception:
                log.failure("asking for missing blob {digest} failed", digest=str(digest))
                fetching = False
            if fetching:
                return Error(ErrorCode.BUSY, None, f"fetching {digest} from storage")
            torrent = await self._torrents.serving(handshake.namespace, digest)  # it may have landed meanwhile
        if torrent is None or torrent.closed:
            return Error(ErrorCode.UNKNOWN_BLOB, None, f"no {digest} here")
        if handshake.info_hash.hex() != torrent.info.info_hash:
            return Error(ErrorCode.UNKNOWN_BLOB, None, "info hash differs")
        return torrent

    def _log_refused(self, torrent: Torrent, peer_id: str, address: str | None, why: str) -> None:
        log.info(
            "refusing peer {peer} from {peer_addr} for {digest}: {why}",
            peer=peer_id[:12], peer_addr=address, digest=str(torrent.info.digest), why=why,
        )  # fmt: skip

    # --- sessions and their connections ---------------------------------------------------------------------

    def session_factory(
        self, torrent: Torrent, *, expected: str | None, initiator: bool, namespace: str | None = None
    ) -> SessionFactory:
        """Builds the session of a connection of ``torrent``: dialled (``initiator``, to the peer ``expected``)
        or accepted (for the ``namespace`` the peer asked)."""
        observer = self._traffic.observer(torrent)

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

    def opened(
        self,
        torrent: Torrent,
        protocol: PeerProtocol,
        session: PeerSession,
        *,
        origin: bool,
        address: str | None = None,
        admitted: bool = False,
    ) -> None:
        """A handshake completed: keep the connection, unless it is one too many (``admitted``: an inbound one,
        which ``Slots.admit`` has counted already, catch-up slots included)."""
        assert session.remote is not None
        peer_id = session.remote.peer_id.hex()
        torrent.dials.connected(peer_id)
        if torrent.closed or peer_id in torrent.conns:
            session.close("duplicate connection" if not torrent.closed else "torrent closed")
            return
        if torrent.complete and session.remote_bitfield.complete():
            session.close("both sides are complete")
            return
        limit = self._config.max_conns_per_torrent + (self._config.catch_up_conns if admitted else 0)
        if len(torrent.conns) >= limit:
            # A dial that completed after its slot hold, once the torrent filled; or handshakes admitted together.
            session.close("at capacity")
            return
        conn = Conn(peer_id, protocol, session, origin, torrent)
        torrent.conns[peer_id] = conn
        log.debug(
            "connected to peer {peer} at {peer_ip} for {digest}",
            peer=peer_id[:12], peer_ip=address, digest=str(torrent.info.digest),
        )  # fmt: skip
        self.slots.opened(conn, torrent, address, self._clock.seconds())
        session.when_closed().addCallback(self._closed, torrent, conn)
        self._traffic.joined(torrent, conn)

    def _closed(self, closed: Closed, torrent: Torrent, conn: Conn) -> None:
        if closed.violation:
            self.blacklist(torrent, conn.peer_id, closed.reason)
        self.detach(torrent, conn)

    def detach(self, torrent: Torrent, conn: Conn) -> None:
        """Forget a connection that is closing: its slot, its queued sends, its requests."""
        if torrent.conns.get(conn.peer_id) is not conn:
            return
        del torrent.conns[conn.peer_id]
        self.slots.closed(conn)
        self._traffic.left(torrent, conn)

    # --- eviction and blacklists ----------------------------------------------------------------------------

    def preempt(self, torrent: Torrent, now: float) -> None:
        """Expire ``torrent``'s blacklist entries and evict its connections that move no piece."""
        torrent.dials.expire(now)
        pending, busy = torrent.dials.holding(now), self._traffic.busy(torrent)
        for conn in self.slots.idle(torrent, now, complete=torrent.complete, pending=pending, busy=busy):
            self.evict(torrent, conn, f"no piece moved for {self._config.slot_idle:g} s")

    def evict(self, torrent: Torrent, conn: Conn, why: str) -> None:
        """Close a connection that holds a slot without moving pieces; its peer is not admitted again for a few
        seconds."""
        self._counts["connections_evicted"] += 1
        log.info(
            "evicting peer {peer} from {digest}: {why}",
            peer=conn.peer_id[:12],
            digest=str(torrent.info.digest),
            why=why,
        )
        self.detach(torrent, conn)
        torrent.dials.failed(conn.peer_id, Outcome.BUSY, self._clock.seconds())
        conn.session.close(f"evicted: {why}", error=Error(ErrorCode.BUSY, None, why[: MAX_ERROR_MESSAGE // 4]))

    def blacklist(self, torrent: Torrent, peer_id: str, why: str) -> None:
        torrent.dials.failed(peer_id, Outcome.FAULT, self._clock.seconds())
        self.log_blacklisted(torrent, peer_id, why)

    def log_blacklisted(self, torrent: Torrent, peer_id: str, why: str) -> None:
        log.info(
            "blacklisting peer {peer} for {digest}: {why}", peer=peer_id[:12], digest=str(torrent.info.digest), why=why
        )

    # --- for the listener -----------------------------------------------------------------------------------

    def accepting(self, address: str | None) -> PeerProtocol:
        return PeerProtocol.accepting(
            lambda handshake: self.accept(handshake, address),
            clock=self._clock,
            handshake_timeout=self._config.handshake_timeout,
        )


class _Listener(Factory):
    def __init__(self, connections: Connections) -> None:
        self._connections = connections

    def buildProtocol(self, addr: Any) -> PeerProtocol:
        """``addr``: the remote address; its ``host`` (if any) counts against the per-address limits."""
        host = getattr(addr, "host", None)
        return self._connections.accepting(host if isinstance(host, str) else None)
