"""Serving pieces: the seed driver, which applies the decisions of the seeding policy (``kraken.p2p.seeding``).

Owns the egress bucket and the serving loop. Every peer's requests go into the policy's one outbox; the loop
takes the next piece the policy names, declines it when the policy says so (``PIECE_UNAVAILABLE``, counted in
``requests_declined``), else charges the egress bucket for it before reading it from disk (from the partial blob
while downloading, from the cache once complete), sends it, and tells the torrent's ledger when it has left the
connection's write buffer. One piece is in flight at a time; a piece cancelled meanwhile is not sent. While every
connection with a request waiting has a full write buffer, the loop waits for one of them to drain, or for a request
on a connection with room.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from kraken.p2p.seeding import Ask, Seeding
from kraken.p2p.session import PeerSession
from kraken.p2p.slots import Slots
from kraken.p2p.torrent import LOG_NAMESPACE, Conn, Torrent
from kraken.store import CAStore
from kraken.throttle import TokenBucket, Unlimited

log = Logger(namespace=LOG_NAMESPACE)


class Seed:
    """Serves the pieces peers ask this daemon for, over all its torrents."""

    def __init__(
        self,
        policy: Seeding[Conn],
        *,
        clock: IReactorTime,
        store: CAStore,
        counts: dict[str, int],
        slots: Slots[Conn],
        egress: TokenBucket | Unlimited,
        running: Callable[[], bool],
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._store = store
        self._counts = counts
        self._slots = slots
        self._egress = egress
        self._running = running
        self._serving = False
        self._in_flight: Ask[Conn] | None = None
        self._woken: Deferred[None] | None = None  # fired by a request that can go while the loop waits

    # --- what the peers say ---------------------------------------------------------------------------------

    def piece_requested(self, torrent: Torrent, session: PeerSession, index: int) -> None:
        conn = torrent.conn_of(session)
        if conn is None:
            return
        if not torrent.bitfield[index]:
            session.send_unavailable(index, "piece not here yet")
            return
        self._policy.ask(torrent.ledger, conn, conn.peer_id, index)
        if self._woken is not None and conn.protocol.writable:
            woken, self._woken = self._woken, None
            woken.callback(None)
        if not self._serving:
            self._serving = True
            Deferred.fromCoroutine(self._serve()).addErrback(lambda f: log.failure("serving pieces failed", f))

    def piece_cancelled(self, torrent: Torrent, session: PeerSession, index: int) -> None:
        conn = torrent.conn_of(session)
        if conn is None:
            return
        self._policy.cancel(conn, index)
        if self._in_flight is not None and self._in_flight.conn is conn and self._in_flight.index == index:
            self._in_flight.cancelled = True

    def forget(self, conn: Conn) -> None:
        """``conn`` is closing: its requests are dropped."""
        self._policy.drop(conn)

    def busy(self, torrent: Torrent) -> set[Conn]:
        """Connections of ``torrent`` with a request queued here while they can take it, or one being sent."""
        busy = {a.conn for a in self._policy.waiting() if a.conn.torrent is torrent and a.conn.protocol.writable}
        if self._in_flight is not None and self._in_flight.conn.torrent is torrent:
            busy.add(self._in_flight.conn)
        return busy

    def close(self) -> None:
        self._egress.close()

    # --- the serving loop -----------------------------------------------------------------------------------

    async def _serve(self) -> None:
        """Send the outbox's pieces, one at a time through the egress bucket, in the policy's order."""
        try:
            while self._policy and self._running():
                ask = self._policy.next(alive=_alive, writable=_writable, holders=_holders)
                if ask is None:
                    if self._policy:
                        await self._any_writable()
                    continue
                if self._declines(ask):
                    self._counts["requests_declined"] += 1
                    ask.conn.session.send_unavailable(ask.index, "recently seeded to a peer: ask the swarm")
                    continue
                self._in_flight = ask
                await self._send(ask)
        except CancelledError:
            pass
        finally:
            self._in_flight = None
            self._serving = False

    def _declines(self, ask: Ask[Conn]) -> bool:
        torrent = ask.conn.torrent
        return self._policy.declines(ask, complete=torrent.complete, connected=torrent.conns, now=self._now())

    async def _send(self, ask: Ask[Conn]) -> None:
        conn, index = ask.conn, ask.index
        torrent = conn.torrent
        size = torrent.info.piece_size(index)
        await self._egress.reserve(size)
        if ask.cancelled or torrent.conns.get(conn.peer_id) is not conn:
            self._egress.refund(size)
            return
        data = await self._read_piece(torrent, index)
        conn.session.send_piece(index, data)
        token, whole = torrent.ledger.sent(index, conn.peer_id)
        if whole:
            log.info("sent every piece of {digest} once", digest=str(torrent.info.digest))
        # The piece is on its way while it waits in the write buffer (seconds per piece behind a slow link): its
        # time is taken once the buffer has drained.
        conn.protocol.when_writable().addBoth(lambda _: torrent.ledger.left(index, token, self._now()))
        torrent.last_active = self._now()
        self._slots.progress(conn, torrent.last_active)
        self._counts["pieces_out"] += 1
        self._counts["bytes_out"] += size
        torrent.traffic.sent(size)

    async def _any_writable(self) -> None:
        """Wait until a connection with a request waiting can take more (or is gone: the policy drops its
        requests), or a request comes from one that can."""
        drained: Deferred[None] = defer.race([a.conn.protocol.when_writable() for a in self._policy.waiting()]).addBoth(
            _gone_or_drained
        )
        woken: Deferred[None] = Deferred()
        self._woken = woken
        try:
            await defer.race([drained, woken])
        finally:
            self._woken = None

    async def _read_piece(self, torrent: Torrent, index: int) -> bytes:
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

    def _now(self) -> float:
        return self._clock.seconds()


def _gone_or_drained(result: object) -> None:
    """A race of ``when_writable``s settled: one drained, or (a ``FailureGroup``) every one of them is gone."""
    if isinstance(result, Failure):
        result.trap(defer.FailureGroup)


def _alive(conn: Conn) -> bool:
    """Open, and its transport still takes writes."""
    return conn.torrent.conns.get(conn.peer_id) is conn and not conn.protocol.lost


def _writable(conn: Conn) -> bool:
    return conn.protocol.writable


def _holders(ask: Ask[Conn]) -> int:
    """How many of the torrent's peers already have the piece: the fewer, the sooner it should go."""
    return sum(c.session.remote_bitfield[ask.index] for c in ask.conn.torrent.conns.values())
