"""The simulator's daemons (``bench/simulate.py``): origins, agents and one tracker on the virtual clock and the
flow-level network of ``_sim_net``, driven by the project's own policy objects.

What is the project's and what is the simulator's:

- **The project's, imported and called:** ``Dispatcher`` (which piece of whom, pipelines, timeouts' penalties),
  ``Seeding`` and ``Ledger`` (the outbox's order, super-seeding, an origin's whole copy first), ``Dials`` (dial
  room, back-off, blacklists), ``Slots`` (admission, eviction of idle holders), the tracker's ``MemoryPeerStore``
  (``record``/``live``: fair sampling, seeders first) and ``handout`` (origins first, the answer's limit), every
  knob from ``P2PConfig``/``OriginP2PConfig``/``TrackerConfig`` and piece lengths from ``PieceLengthRule``.
- **The simulator's, mirroring the drivers** (``leech.py``, ``seed.py``, ``announce.py``, ``connections.py``):
  what calls those objects when. A message is a call one latency later; the handshake is a connect plus the
  handshake both ways (two round trips) with the bitfields it carries; a piece is a flow from the seeder's
  uplink to the leecher's downlink, one at a time per connection (the write buffer).
- **Left out:** the session state machine (``PeerSession``) and the wire codec (framing, handshake and idle
  timers) are not run, their messages are modelled directly; hashing and disk writes take no time; the
  bandwidth token buckets are replaced by the hosts' caps; an origin holds every blob (no ring).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from _sim_hosts import Blob, Conn, Host, Torrent, alive, copy, holders, ones, writable
from _sim_net import Loop, Net
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from kraken.core import Bitfield
from kraken.core.peer import PeerInfo
from kraken.p2p.config import OriginP2PConfig, P2PConfig
from kraken.p2p.dials import Outcome
from kraken.p2p.session import PeerDisconnected, PieceRequestFailed
from kraken.p2p.slots import far_behind
from kraken.p2p.wire import ErrorCode
from kraken.tracker.config import TrackerConfig
from kraken.tracker.handout import handout
from kraken.tracker.peers import MemoryPeerStore

__all__ = ["Blob", "Host", "World"]


def _ignore(chunk: object) -> None:
    pass


class World:
    """Hosts, one tracker and the network between them. ``latency``: one way, seconds."""

    def __init__(
        self,
        *,
        latency: float = 0.0005,
        handshake_delay: float = 0.0,
        seed: int = 1,
        agent: P2PConfig | None = None,
        origin: P2PConfig | None = None,
        tracker: TrackerConfig | None = None,
    ) -> None:
        self.loop = Loop()
        self.handshake_delay = handshake_delay  # up to this much more per handshake (a busy daemon's reply)
        self.net = Net(self.loop, latency)
        self.rng = random.Random(seed)
        self.agent_config = agent or P2PConfig()
        self.origin_config = origin or OriginP2PConfig()
        self.tracker = tracker or TrackerConfig()
        self.store = MemoryPeerStore(
            self.tracker.peer_ttl, self.loop, max_peers=self.tracker.max_peers_per_blob,
            max_per_source=self.tracker.max_peers_per_source, rng=self.rng,
        )  # type: ignore[arg-type]  # fmt: skip
        self.hosts: list[Host] = []
        self.origins: list[Host] = []
        self.pulling: set[int] = set()
        self.broken: list[Failure] = []
        self.egress: list[tuple[float, int]] = [(0.0, 0)]  # (time, bytes the origins have sent so far)
        self._origin_bytes = 0
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "requests_timed_out",
                "requests_declined",
                "duplicate_pieces",
                "corrupt_pieces",
                "dials_refused",
                "evicted",
            ),
            0,
        )

    # -- building -----------------------------------------------------------------------------------------------

    def add_origin(self, up: float, down: float, blobs: Iterable[Blob]) -> Host:
        host = self._add(up, down, self.origin_config, origin=True)
        for blob in blobs:
            host.torrents[blob.name] = Torrent(host, blob, complete=True)
        self.origins.append(host)
        return host

    def add_agent(self, up: float, down: float) -> Host:
        return self._add(up, down, self.agent_config, origin=False)

    def _add(self, up: float, down: float, config: P2PConfig, origin: bool) -> Host:
        index = self.net.add_host(up, down)
        host = Host(index, config, origin, random.Random(self.rng.random()))
        self.hosts.append(host)
        self.loop.post(config.preemption_interval * (1 + self.rng.random()), self._preempt, host)
        return host

    def pull(self, host: Host, blobs: Iterable[Blob], at: float = 0.0, jitter: float = 0.0) -> None:
        """``host`` starts downloading ``blobs`` at ``at``, each blob's first announce up to ``jitter`` later (the
        spread of real daemons receiving the same order: HTTP requests, a metainfo lookup, a process's timers)."""
        self.pulling.add(host.index)
        host.started = at
        for blob in blobs:
            torrent = host.torrents[blob.name] = Torrent(host, blob, complete=False)
            torrent.done_at = None
            self.loop.post(at + jitter * self.rng.random(), self._announce, torrent)

    def run(self, until: float = float("inf")) -> None:
        """Run until every pull is complete (or ``until``)."""
        self.loop.run(until, done=lambda: not self.pulling or bool(self.broken))
        if self.broken:
            self.broken[0].raiseException()

    def _broke(self, failure: Failure) -> None:
        """An exception in a request's callbacks is a bug of the simulator: it stops the run."""
        self.broken.append(failure)

    # -- the tracker ----------------------------------------------------------------------------------------------

    def _announce(self, torrent: Torrent) -> None:
        self.net.send(self._tracker_announce, torrent, torrent.complete)

    def _tracker_announce(self, torrent: Torrent, complete: bool) -> None:
        host, blob, now, limit = torrent.host, torrent.blob, self.loop.now, self.tracker.max_peers
        me = PeerInfo(host.peer_id, host.ip, 16001, complete=complete)
        self.store.record(blob.info_hash, me, now, host.ip)
        origins = [o.info for o in self.origins if blob.name in o.torrents]
        peers = handout(self.store.live(blob.info_hash, limit, now), origins, host.peer_id, limit, self.rng)
        self.net.send(self._answered, torrent, complete, peers, float(self.tracker.announce_interval))

    def _answered(self, torrent: Torrent, complete: bool, peers: list[PeerInfo], interval: float) -> None:
        """``announce.Announcing._announce_once`` after the answer."""
        c = torrent.host.config
        if complete:
            return  # a complete torrent announces once and then stops
        if not 0 < interval <= c.max_announce_interval:
            interval = c.announce_interval
        self._dial_some(torrent, peers)
        if not torrent.complete:
            linked = len(torrent.conns) + torrent.dials.pending_count()
            others = sum(1 for p in peers if p.peer_id != torrent.host.peer_id)
            if linked < c.max_conns_per_torrent and others > linked:
                interval = min(interval, c.underconnected_announce)
            self.loop.post(interval, self._announce, torrent)

    # -- dialling and admission -----------------------------------------------------------------------------------

    def _dial_some(self, torrent: Torrent, peers: list[PeerInfo]) -> None:
        now, dials, me = self.loop.now, torrent.dials, torrent.host.peer_id
        room = dials.room(len(torrent.conns), now)
        for peer in sorted(peers, key=lambda p: dials.strikes(p.peer_id) > 0):
            if room <= 0:
                return
            pid = peer.peer_id
            if pid == me or pid in torrent.conns or dials.pending(pid) or dials.blocked(pid, now):
                continue
            dials.started(pid, now)
            room -= 1
            remote = self.hosts[int(pid, 16) - 1]
            delay = 3 * self.net.latency + self.handshake_delay * self.rng.random()  # SYN, SYN-ACK, handshake
            self.loop.post(delay, self._handshake, torrent, remote)

    def _handshake(self, dialler: Torrent, remote: Host) -> None:
        """The remote's ``connections._decide`` for a handshake from ``dialler``."""
        now, me = self.loop.now, dialler.host.peer_id
        torrent = remote.torrents.get(dialler.blob.name)
        refusal: Outcome | None = None
        if torrent is None:
            refusal = Outcome.FAULT
        elif torrent.dials.blocked(me, now) or me in torrent.conns:
            refusal = Outcome.BUSY
        elif torrent.dials.pending(me) and me > remote.peer_id:
            refusal = Outcome.BUSY
        else:
            behind = far_behind(torrent.have.count(), dialler.have.count(), len(torrent.have))
            admission = remote.slots.admit(
                torrent,
                dialler.host.ip,
                now,
                pending=torrent.dials.holding(now),
                busy=self._busy(torrent),
                behind=behind,
            )
            if not admission.admit:
                refusal = Outcome.BUSY
            elif admission.evict is not None:
                self._close(admission.evict)
        if refusal is not None or torrent is None:
            self.counts["dials_refused"] += 1
            self.net.send(self._refused, dialler, remote.peer_id, refusal)
            return
        mine = Conn(self.loop, self._withdraw, torrent, dialler.host, copy(dialler.have))
        theirs = Conn(self.loop, self._withdraw, dialler, remote, copy(torrent.have))
        mine.other, theirs.other = theirs, mine
        self._opened(mine)
        self.net.send(self._opened, theirs)

    def _refused(self, torrent: Torrent, peer_id: str, outcome: Outcome) -> None:
        if peer_id in torrent.conns:
            torrent.dials.cancelled(peer_id)
        else:
            torrent.dials.failed(peer_id, outcome, self.loop.now)

    def _opened(self, conn: Conn) -> None:
        torrent, pid = conn.torrent, conn.peer.peer_id
        if pid in torrent.conns:  # a lost race with its own dial to us: the other connection stays
            torrent.dials.cancelled(pid)
            self._close(conn.other)
            return
        conn.open = True
        torrent.conns[pid] = conn
        counts = torrent.holders
        for i in ones(conn.remote):
            counts[i] += 1
        torrent.host.slots.opened(conn, torrent, conn.peer.ip, self.loop.now)
        torrent.dials.connected(pid)
        if torrent.complete and conn.remote.complete():
            self._close(conn)
        elif torrent.dispatcher is not None:
            limit = torrent.host.config.origin_pipeline_limit if conn.peer.origin else None
            torrent.dispatcher.peer_joined(pid, conn.remote, pipeline_limit=limit)
            self._request_more(conn)

    def _close(self, conn: Conn) -> None:
        """Close ``conn`` here now, and at the remote one latency later."""
        if conn.open:
            self._drop(conn)
            self.net.send(self._drop, conn.other)

    def _drop(self, conn: Conn) -> None:
        if not conn.open:
            return
        conn.open = False
        torrent, host, pid = conn.torrent, conn.torrent.host, conn.peer.peer_id
        registered = torrent.conns.get(pid) is conn
        if registered:
            del torrent.conns[pid]
            counts = torrent.holders
            for i in ones(conn.remote):
                counts[i] -= 1
        host.slots.closed(conn)
        host.seeding.drop(conn)
        if conn.sending is not None:
            self.net.cancel(conn.sending)
            conn.sending = None
            conn.writable = True
        conn.pending.fail_all(lambda: PeerDisconnected("closed"))
        if registered and torrent.dispatcher is not None:
            torrent.dispatcher.peer_left(pid)
            self._request_all(torrent)
        self._serve(host)

    def _busy(self, torrent: Torrent) -> set[Conn]:
        """``scheduler.busy``: connections waiting on this side or waited on."""
        busy = {c for c in torrent.conns.values() if c.requests or c.sending is not None}
        busy.update(a.conn for a in torrent.host.seeding.waiting() if a.conn.torrent is torrent)
        return busy

    def _preempt(self, host: Host) -> None:
        """Idle holders evicted, dial bookkeeping expired: every ``preemption_interval``."""
        now = self.loop.now
        for torrent in host.torrents.values():
            for conn in host.slots.idle(
                torrent, now, complete=torrent.complete, pending=torrent.dials.holding(now), busy=self._busy(torrent)
            ):
                self.counts["evicted"] += 1
                self._close(conn)
            torrent.dials.expire(now)
        self.loop.post(host.config.preemption_interval, self._preempt, host)

    # -- leeching ------------------------------------------------------------------------------------------------

    def _request_more(self, conn: Conn) -> None:
        """``leech._request_more``: the dispatcher's choices, each asked through the session's ``PendingRequests``
        (whose timer runs only while no payload streams in on the connection)."""
        torrent = conn.torrent
        if torrent.dispatcher is None or not conn.open:
            return
        for index in torrent.dispatcher.next_requests(conn.peer.peer_id, self.loop.now):
            d = conn.pending.add(index, _ignore)
            conn.requests[index] = d
            d.addCallbacks(self._answered_piece, self._request_failed, (conn, index), None, (conn, index))
            d.addErrback(self._broke)
            self.net.send(self._requested, conn.other, index)
            conn.pending.arm(index)

    def _request_all(self, torrent: Torrent) -> None:
        for conn in list(torrent.conns.values()):
            self._request_more(conn)

    def _withdraw(self, conn: Conn, index: int) -> None:
        """The session's ``_cancel_request``: a request cancelled or timed out here."""
        if conn.pending.withdraw(index, open=conn.open):
            self.net.send(self._cancelled, conn.other, index)

    def _request_failed(self, failure: Failure, conn: Conn, index: int) -> None:
        """``leech._receive``'s failures and ``leech._failed``."""
        conn.requests.pop(index, None)
        torrent = conn.torrent
        if torrent.dispatcher is None or not conn.open or failure.check(CancelledError, PeerDisconnected):
            return
        if failure.check(TimeoutError):
            self.counts["requests_timed_out"] += 1
            until, slow = self.loop.now + torrent.timeout, True
        else:  # PIECE_UNAVAILABLE: ask again later
            until, slow = self.loop.now + torrent.timeout / 4, False
        torrent.dispatcher.piece_failed(conn.peer.peer_id, index, until=until, slow=slow)
        self._request_all(torrent)

    def _unavailable(self, conn: Conn, index: int) -> None:
        if conn.open:
            conn.pending.refused(index, PieceRequestFailed(index, ErrorCode.PIECE_UNAVAILABLE, "declined"))

    def _first_byte(self, conn: Conn, index: int) -> None:
        if conn.open:
            conn.pending.started(index)

    def _delivered(self, conn: Conn, index: int, payload: bytes | None) -> None:
        if conn.open:
            conn.payloads[index] = payload
            conn.pending.ended(index)  # fires the request's Deferred, if it was still wanted
            conn.payloads.pop(index, None)

    def _answered_piece(self, _: object, conn: Conn, index: int) -> None:
        """The last byte of piece ``index`` is here (``leech._fetch``, ``_write`` and ``_piece_arrived``)."""
        conn.requests.pop(index, None)
        torrent, pid = conn.torrent, conn.peer.peer_id
        dispatcher = torrent.dispatcher
        if dispatcher is None or torrent.have[index]:
            self.counts["duplicate_pieces"] += 1
            return
        if torrent.blob.info is not None and not torrent.blob.info.piece_ok(index, conn.payloads[index] or b""):
            self.counts["corrupt_pieces"] += 1  # leech._write: never asked of that peer again, and it is closed
            dispatcher.piece_failed(pid, index)
            self._close(conn)
            return
        dispatcher.piece_arrived(pid, index)
        for other in dispatcher.piece_received(pid, index):
            oc = torrent.conns.get(other)
            pending = oc.requests.get(index) if oc is not None else None
            if pending is not None:
                pending.cancel()
        torrent.have.set(index)
        torrent.host.slots.progress(conn, self.loop.now)
        for other_conn in torrent.conns.values():
            if other_conn is not conn:
                self.net.send(self._has, other_conn.other, index)
        if dispatcher.complete():
            self._finish(torrent)
        else:
            self._request_all(torrent)

    def _has(self, conn: Conn, index: int) -> None:
        if not conn.open:
            return
        if not conn.remote[index]:
            conn.remote.set(index)
            conn.torrent.holders[index] += 1
        dispatcher = conn.torrent.dispatcher
        if dispatcher is not None:
            dispatcher.peer_has(conn.peer.peer_id, index)
            self._request_more(conn)

    def _finish(self, torrent: Torrent) -> None:
        torrent.dispatcher = None
        torrent.complete = True
        torrent.done_at = self.loop.now
        for conn in list(torrent.conns.values()):
            for request in list(conn.requests.values()):
                request.cancel()
            if conn.remote.complete():
                self._close(conn)
            else:
                self.net.send(self._peer_complete, conn.other)
        self._announce(torrent)
        host = torrent.host
        if host.done_at() is not None:
            self.pulling.discard(host.index)

    def _peer_complete(self, conn: Conn) -> None:
        if not conn.open:
            return
        torrent = conn.torrent
        counts = torrent.holders
        for i in conn.remote.zeros():
            counts[i] += 1
        conn.remote = Bitfield.full(len(conn.remote))
        if torrent.complete:
            self._close(conn)
        elif torrent.dispatcher is not None:
            torrent.dispatcher.peer_complete(conn.peer.peer_id)
            self._request_more(conn)

    # -- seeding -------------------------------------------------------------------------------------------------

    def _requested(self, conn: Conn, index: int) -> None:
        if not conn.open:
            return
        torrent = conn.torrent
        if not torrent.have[index]:
            self.net.send(self._unavailable, conn.other, index)
            return
        torrent.host.seeding.ask(torrent.ledger, conn, conn.peer.peer_id, index)
        self._serve(torrent.host)

    def _cancelled(self, conn: Conn, index: int) -> None:
        conn.torrent.host.seeding.cancel(conn, index)

    def _serve(self, host: Host) -> None:
        """``seed._serve``: every writable connection gets the next piece the policy names."""
        policy, now = host.seeding, self.loop.now
        while policy:
            ask = policy.next(alive=alive, writable=writable, holders=holders)
            if ask is None:
                return
            conn, index, torrent = ask.conn, ask.index, ask.conn.torrent
            if policy.declines(ask, complete=torrent.complete, connected=torrent.conns, now=now):
                self.counts["requests_declined"] += 1
                self.net.send(self._unavailable, conn.other, index)
                continue
            token, _ = torrent.ledger.sent(index, conn.peer.peer_id)
            size = torrent.blob.piece_size(index)
            conn.sending = self.net.start(host.index, conn.peer.index, size, _Sent(self, conn, index, token))
            conn.writable = False
            host.slots.progress(conn, now)
            self.net.send(self._first_byte, conn.other, index)

    def _sent(self, conn: Conn, index: int, token: int) -> None:
        torrent, host = conn.torrent, conn.torrent.host
        conn.sending = None
        conn.writable = True
        torrent.ledger.left(index, token, self.loop.now)
        if host.origin:
            self._origin_bytes += torrent.blob.piece_size(index)
            self.egress.append((self.loop.now, self._origin_bytes))
        self.net.send(self._delivered, conn.other, index, torrent.blob.payload(index))
        self._serve(host)


class _Sent:
    """The end of a piece's flow (a callable rather than a closure, to keep 10^7 of them cheap)."""

    __slots__ = ("conn", "index", "token", "world")

    def __init__(self, world: World, conn: Conn, index: int, token: int) -> None:
        self.world, self.conn, self.index, self.token = world, conn, index, token

    def __call__(self, *args: Any) -> None:
        self.world._sent(self.conn, self.index, self.token)
