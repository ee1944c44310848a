"""Announcing and dialling: a download's announce loop, and the dials to the peers the tracker hands out.

Owns: the announce timer of each torrent (``soon``), announcing (with the peers this side could not reach since
the last announce), choosing which handed-out peers to dial now (through the torrent's ``Dials``, which also keeps
pending dials from using up the connection budget), dialling them, and what a failed dial costs the peer
(``outcome``). ``connect_tcp`` is the one place where P2P client connections are made.

A download announces at the interval the tracker returns (``announce_interval`` when it gives none usable) until
it is complete, then once more, complete. A download with fewer connections than it may have, handed out more
peers than it reached, announces again within ``underconnected_announce``. An origin does not announce: the
tracker learns which origins hold a blob from the origins themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast
from typing import Protocol as TypingProtocol

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectError, NoRouteError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from kraken.core import Digest
from kraken.core.peer import PeerInfo
from kraken.net.tls import TLSClientEndpoint, TLSContexts
from kraken.p2p.config import P2PConfig
from kraken.p2p.connections import Connections
from kraken.p2p.dials import Outcome
from kraken.p2p.protocol import PeerProtocol, SessionFactory
from kraken.p2p.session import HANDSHAKE_TIMED_OUT, PeerDisconnected, PeerSession
from kraken.p2p.torrent import LOG_NAMESPACE, Torrent
from kraken.p2p.wire import ErrorCode

log = Logger(namespace=LOG_NAMESPACE)


class Announcer(TypingProtocol):
    """``(me, namespace, digest, info_hash, unreachable=[peer ids]) -> (peers, interval)`` (the tracker client's
    ``announce``); ``unreachable`` names the peers this one could not reach since its last announce. With
    ``p2p.announce_progress`` it is also given ``progress=`` (``kraken.p2p.traffic.Traffic.report``)."""

    def __call__(
        self,
        me: PeerInfo,
        namespace: str,
        digest: Digest,
        info_hash: str,
        /,
        *,
        unreachable: Sequence[str] = (),
        progress: Mapping[str, Any] | None = None,
    ) -> Awaitable[tuple[list[PeerInfo], float]]: ...


Connector = Callable[[PeerInfo, Factory], "Deferred[Protocol]"]
"""Dials a peer with a factory (tests join schedulers in memory)."""


def connect_tcp(
    reactor: Any, peer: PeerInfo, factory: Factory, *, timeout: float, tls: TLSContexts | None = None
) -> Deferred[Protocol]:
    """Open a P2P connection to ``peer`` (IPv4 or IPv6), giving up after ``timeout`` seconds: the one place where
    this daemon makes client connections to peers. With ``tls`` (``p2p.tls: true``) the connection is mutual
    TLS: this side presents its certificate and checks the peer's against ``tls.ca`` and the peer's IP."""
    endpoint_class = TCP6ClientEndpoint if ":" in peer.ip else TCP4ClientEndpoint
    endpoint: Any = endpoint_class(reactor, peer.ip, peer.port, timeout=timeout)
    if tls is not None:
        endpoint = TLSClientEndpoint(tls.client_creator(peer.ip), endpoint)
    return cast("Deferred[Protocol]", endpoint.connect(factory))


class Announcing:
    """The announce loops of one agent's downloads and the dials they lead to."""

    def __init__(
        self,
        config: P2PConfig,
        *,
        clock: IReactorTime,
        me: PeerInfo,
        announcer: Announcer | None,
        connect: Connector,
        connections: Connections,
        counts: dict[str, int],
    ) -> None:
        """``announcer``: None on an origin, which never announces."""
        self._config = config
        self._clock = clock
        self._me = me
        self._announcer = announcer
        self._connect = connect
        self._connections = connections
        self._counts = counts

    def soon(self, torrent: Torrent, delay: float) -> None:
        """Announce ``torrent`` in ``delay`` seconds (instead of when it was due)."""
        if torrent.closed or self._announcer is None:
            return
        if torrent.announce_call is not None and torrent.announce_call.active():
            torrent.announce_call.cancel()
        torrent.announce_call = self._clock.callLater(delay, self._announce, torrent)

    def _announce(self, torrent: Torrent) -> None:
        torrent.announce_call = None
        Deferred.fromCoroutine(self._announce_once(torrent)).addErrback(
            lambda f: log.failure("announce loop failed", f)
        )

    async def _announce_once(self, torrent: Torrent) -> None:
        assert self._announcer is not None
        complete = torrent.complete
        me = attrs.evolve(self._me, complete=complete)
        interval: float = self._config.announce_interval
        # Best effort: a report lost with a failed announce is not sent again.
        unreachable = torrent.dials.take_reports()
        extra: dict[str, Any] = {}
        if self._config.announce_progress:
            have, pieces = torrent.bitfield.count(), torrent.info.num_pieces
            extra["progress"] = torrent.traffic.report(self._clock.seconds(), have, pieces)
        try:
            peers, interval = await self._announcer(
                me, torrent.namespace, torrent.info.digest, torrent.info.info_hash, unreachable=unreachable, **extra
            )
        except CancelledError:
            raise
        except Exception as e:
            log.warn("announce of {digest} failed: {error}", digest=str(torrent.info.digest), error=str(e))
            peers = []
        if torrent.closed or complete:
            return  # a complete torrent announces once and then stops
        if not 0 < interval <= self._config.max_announce_interval:
            interval = self._config.announce_interval
        self._dial_some(torrent, peers)
        if not torrent.complete:
            linked = len(torrent.conns) + torrent.dials.pending_count()
            others = sum(1 for p in peers if p.peer_id != self._me.peer_id)
            if linked < self._config.max_conns_per_torrent and others > linked:
                # Peers were handed out that are busy or backed off: ask again soon for ones with room.
                interval = min(interval, self._config.underconnected_announce)
            self.soon(torrent, interval)

    def _dial_some(self, torrent: Torrent, peers: list[PeerInfo]) -> None:
        now, dials = self._clock.seconds(), torrent.dials
        room = dials.room(len(torrent.conns), now)
        for peer in sorted(peers, key=lambda p: dials.strikes(p.peer_id) > 0):  # peers that failed us go last
            if room <= 0:
                return
            if (
                peer.peer_id == self._me.peer_id
                or peer.peer_id in torrent.conns
                or dials.pending(peer.peer_id)
                or dials.blocked(peer.peer_id, now)
            ):
                continue
            dials.started(peer.peer_id, now)
            room -= 1
            Deferred.fromCoroutine(self._dial(torrent, peer)).addErrback(
                lambda f: log.failure("dialling a peer failed", f)
            )

    async def _dial(self, torrent: Torrent, peer: PeerInfo) -> None:
        factory = _Dialer(self._connections.session_factory(torrent, expected=peer.peer_id, initiator=True))
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
            self._dial_failed(torrent, peer, e, outcome(e, session))
            return
        self._connections.opened(torrent, protocol, session, origin=peer.origin, address=peer.ip)

    def _dial_failed(self, torrent: Torrent, peer: PeerInfo, e: Exception, outcome: Outcome) -> None:
        wait, unreachable = torrent.dials.failed(peer.peer_id, outcome, self._clock.seconds())
        if unreachable:
            self._counts["peers_unreachable"] += 1
            log.info(
                "peer {peer} at {peer_addr} unreachable for {digest}: {error}; not dialled for {seconds:g} s",
                peer=peer.peer_id[:12], peer_addr=peer.address, digest=str(torrent.info.digest),
                error=str(e) or type(e).__name__, seconds=wait,
            )  # fmt: skip
        elif outcome is Outcome.FAULT:
            self._connections.log_blacklisted(torrent, peer.peer_id, f"dial failed: {e}")


class _Dialer(Factory):
    def __init__(self, make: SessionFactory) -> None:
        self._make = make

    def buildProtocol(self, addr: object) -> PeerProtocol:
        return PeerProtocol(self._make)


def outcome(error: Exception, session: PeerSession | None) -> Outcome:
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
