"""An in-memory swarm for scheduler tests: schedulers joined through iosim, a fake tracker, one Clock.

Every store uses an ``InlineWorker``, so disk and hashing happen at once and nothing waits on a thread. Dialling a
peer connects two protocols with ``iosim.connect``; ``Swarm.flush`` pumps every connection until no byte moves and
``Swarm.run`` also advances the clock, step by step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.test import iosim

from kraken.core import Bitfield, Digest, MetaInfo, PieceLengthRule
from kraken.core.peer import PeerInfo
from kraken.p2p import wire
from kraken.p2p.config import BandwidthConfig, P2PConfig
from kraken.p2p.scheduler import Scheduler
from kraken.store import CAStore
from kraken.workers import InlineWorker

PIECE = 64
NAMESPACE = "library/test"
# The defaults the tests reason about: P2PConfig's, the one place they live.
HANDSHAKE_TIMEOUT = attrs.fields(P2PConfig).handshake_timeout.default
BUSY_BACKOFF = attrs.fields(P2PConfig).busy_backoff.default
PIPELINE_LIMIT = attrs.fields(P2PConfig).pipeline_limit.default


def blob(n_pieces: int, seed: int = 0, piece: int = PIECE) -> tuple[bytes, MetaInfo]:
    data = b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(n_pieces * piece // 32 + 1))
    data = data[: n_pieces * piece - piece // 2]  # a short last piece
    return data, MetaInfo.from_bytes(data, piece)


def peer_id(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def p2p_config(**overrides: Any) -> P2PConfig:
    overrides.setdefault("bandwidth", BandwidthConfig(enabled=False))
    return P2PConfig(listen="tcp:0", advertise="127.0.0.1:1", **overrides)


def make_store(root: str, clock: Clock, piece: int = PIECE) -> CAStore:
    return CAStore(root, worker=InlineWorker(), piece_rule=PieceLengthRule(((0, piece),)), now=clock.seconds)


def outcome(d: Deferred[Any]) -> object:
    """What ``d`` fired with (a result or a Failure), or None while it has not fired."""
    out: list[object] = []
    d.addBoth(out.append)
    return out[0] if out else None


def done(d: Deferred[Any]) -> bool:
    return d.called


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def resolved(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "not finished"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def seed_store(store: CAStore, data: bytes, info: MetaInfo, pieces: list[int] | None = None) -> None:
    """Put ``pieces`` of the blob (all of them: into the cache) into ``store``."""
    partial = resolved(Deferred.fromCoroutine(store.downloads.open(info)))
    for i in range(info.num_pieces) if pieces is None else pieces:
        resolved(Deferred.fromCoroutine(partial.write_piece(i, data[info.piece_offset(i) :][: info.piece_size(i)])))
    if pieces is None:
        resolved(Deferred.fromCoroutine(store.downloads.finish(partial)))


class FakeTracker:
    """Hands out every other announced peer (complete agents, then origins, then the rest) and the metainfo."""

    interval = 1.0

    def __init__(self) -> None:
        self.metainfos: dict[Digest, MetaInfo] = {}
        self.peers: dict[Digest, dict[str, PeerInfo]] = {}
        self.origins: dict[Digest, list[PeerInfo]] = {}
        self.announces: list[PeerInfo] = []
        self.reports: list[list[str]] = []  # the unreachable peers of each announce
        self.metainfo_calls = 0
        self.progress: dict[str, list[dict[str, Any]]] = {}  # peer id -> the progress of each announce

    async def metainfo(self, namespace: str, digest: Digest) -> MetaInfo | None:
        self.metainfo_calls += 1
        return self.metainfos.get(digest)

    async def announce(
        self,
        me: PeerInfo,
        namespace: str,
        digest: Digest,
        info_hash: str,
        /,
        *,
        unreachable: Sequence[str] = (),
        progress: Any = None,
    ) -> tuple[list[PeerInfo], float]:
        assert info_hash == self.metainfos[digest].info_hash
        self.announces.append(me)
        self.reports.append(list(unreachable))
        if progress is not None:
            self.progress.setdefault(me.peer_id, []).append(progress)
        known = self.peers.setdefault(digest, {})
        known[me.peer_id] = me
        others = [p for p in known.values() if p.peer_id != me.peer_id]
        ordered = (
            [p for p in others if p.complete] + self.origins.get(digest, []) + [p for p in others if not p.complete]
        )
        return ordered, self.interval


@attrs.define
class Node:
    name: str
    scheduler: Scheduler
    store: CAStore
    port: int
    dials: int = 0

    @property
    def info(self) -> PeerInfo:
        return PeerInfo(self.scheduler.peer_id, "127.0.0.1", self.port)

    def download(self, digest: Digest, namespace: str = NAMESPACE) -> Deferred[str]:
        return Deferred.fromCoroutine(self.scheduler.download(namespace, digest))


class Swarm:
    def __init__(self, root: Any, **config: Any) -> None:
        self.root = root
        self.clock = Clock()
        self.tracker = FakeTracker()
        self.config = config
        self.pumps: list[iosim.IOPump] = []
        self.by_port: dict[int, Callable[[], Protocol]] = {}
        self.listeners: dict[int, Factory] = {}
        self.nodes: list[Node] = []
        self._next_port = 20000

    # --- building ---

    def _node(
        self, name: str, *, agent: bool, store_root: str | None = None, on_missing: Any = None, **overrides: Any
    ) -> Node:
        port = self._next_port
        self._next_port += 1
        store = make_store(store_root or str(self.root / name), self.clock)
        config = p2p_config(**{**self.config, **overrides})
        scheduler = Scheduler(
            config,
            reactor=self.clock,
            store=store,
            metainfo=self.tracker.metainfo if agent else None,
            announcer=self.tracker.announce if agent else None,
            peer_id=peer_id(name),
            advertise=("127.0.0.1", port),
            connect=self.connect,
            on_missing=on_missing,
        )
        node = Node(name, scheduler, store, port)
        listener = scheduler.factory()
        self.by_port[port] = lambda: listener.buildProtocol(None)
        self.listeners[port] = listener
        scheduler.startService()
        self.nodes.append(node)
        return node

    def agent(self, name: str, **overrides: Any) -> Node:
        return self._node(name, agent=True, **overrides)

    def origin(self, name: str, *blobs: tuple[bytes, MetaInfo], on_missing: Any = None) -> Node:
        # Origins super-seed by default (OriginP2PConfig), agents do not.
        node = self._node(name, agent=False, on_missing=on_missing, super_seed=self.config.get("super_seed", True))
        for data, info in blobs:
            seed_store(node.store, data, info)
            self.publish(info)
            self.tracker.origins.setdefault(info.digest, []).append(
                PeerInfo(node.scheduler.peer_id, "127.0.0.1", node.port, complete=True, origin=True)
            )
        return node

    def publish(self, info: MetaInfo) -> None:
        self.tracker.metainfos[info.digest] = info

    def listen(self, name: str, build: Callable[[], Protocol], *, origin: bool, digest: Digest) -> PeerInfo:
        """A hand-written peer (see ``RawPeer``), handed out by the tracker as a complete peer of ``digest``."""
        port = self._next_port
        self._next_port += 1
        self.by_port[port] = build
        peer = PeerInfo(peer_id(name), "127.0.0.1", port, complete=True, origin=origin)
        if origin:
            self.tracker.origins.setdefault(digest, []).append(peer)
        else:
            self.tracker.peers.setdefault(digest, {})[peer.peer_id] = peer
        return peer

    def raw_peers(
        self, name: str, info: MetaInfo, data: bytes, answer: Callable[[RawPeer, int], None], *, origin: bool
    ) -> list[RawPeer]:
        """A ``RawPeer`` named ``name`` that treats requests with ``answer``, handed out by the tracker as a complete
        peer of ``info``'s blob; returns the list of its connections (one ``RawPeer`` each, in order)."""
        built: list[RawPeer] = []

        def build() -> RawPeer:
            built.append(RawPeer(info, data, answer, name))
            return built[-1]

        self.listen(name, build, origin=origin, digest=info.digest)
        return built

    def stop(self) -> None:
        for node in self.nodes:
            if node.scheduler.running:
                node.scheduler.stopService()
        self.flush()

    def stop_and_settle(self) -> None:
        """Stop every node, let dials still under way give up, and insist that no timer is left running."""
        self.stop()
        self.clock.advance(HANDSHAKE_TIMEOUT)
        self.flush()
        for call in self.clock.getDelayedCalls():
            assert not call.active(), call

    # --- the network ---

    def connect(self, peer: PeerInfo, factory: Factory) -> Deferred[Protocol]:
        build = self.by_port.get(peer.port)
        if build is None:
            return fail(ConnectionRefusedError(f"nothing listens on {peer.port}"))
        for node in self.nodes:
            if node.port == peer.port:
                node.dials += 1
        server = build()
        client = factory.buildProtocol(None)
        assert client is not None
        pump = iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=False, clock=self.clock
        )
        self.pumps.append(pump)
        return succeed(client)

    def dial_in(self, node: Node, client: Protocol, host: str | None = None) -> None:
        """Connect a hand-written ``client`` (see ``RawClient``) to ``node``'s P2P listener, from ``host`` (the
        remote IP the node sees; None: an address without a host, which no per-address limit counts)."""
        server = self.listeners[node.port].buildProtocol(None if host is None else IPv4Address("TCP", host, 40000))
        assert server is not None
        pump = iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=False, clock=self.clock
        )
        self.pumps.append(pump)

    def flush(self) -> None:
        for _ in range(100_000):
            moved = False
            for pump in list(self.pumps):
                if pump.pump():
                    moved = True
            if not moved:
                self.pumps = [p for p in self.pumps if not (p.clientIO.disconnected and p.serverIO.disconnected)]
                return
        raise AssertionError("the swarm never went quiet")

    def run(self, until: Callable[[], bool], *, step: float = 0.1, limit: float = 600.0) -> float:
        """Flush and advance the clock by ``step`` until ``until()``; returns the clock time it took."""
        start = self.clock.seconds()
        self.flush()
        while not until():
            if self.clock.seconds() - start > limit:
                raise AssertionError(f"not done after {limit} s of clock time")
            self.clock.advance(step)
            self.flush()
        return self.clock.seconds() - start


class RawPeer(Protocol):
    """A hand-written peer for misbehaviour: answers the handshake as a seeder of ``info``, then treats each
    ``PIECE_REQUEST`` with ``answer(peer, index)``."""

    def __init__(self, info: MetaInfo, data: bytes, answer: Callable[[RawPeer, int], None], name: str) -> None:
        self.info = info
        self.data = data
        self.answer = answer
        self.peer_id = bytes.fromhex(peer_id(name))
        self.requests: list[int] = []
        self._decoder = wire.Decoder(self)
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self._decoder.feed(data)

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True

    def on_message(self, msg: wire.Message) -> None:
        if isinstance(msg, wire.Handshake):
            full = Bitfield.full(self.info.num_pieces)
            self.write(wire.Handshake(self.peer_id, msg.info_hash, msg.namespace, msg.digest, full))
        elif isinstance(msg, wire.PieceRequest):
            self.requests.append(msg.index)
            self.answer(self, msg.index)

    def on_payload(self, index: int, chunk: wire.Chunk) -> None:
        pass

    def on_payload_end(self, index: int) -> None:
        pass

    def piece(self, index: int) -> bytes:
        return self.data[self.info.piece_offset(index) :][: self.info.piece_size(index)]

    def write(self, msg: wire.Message, payload: bytes = b"") -> None:
        assert self.transport is not None
        self.transport.writeSequence([bytes(c) for c in wire.encode(msg, payload)])


class RawClient(Protocol):
    """A hand-written dialer: sends a handshake for ``info`` in ``namespace`` holding no piece, records what comes
    back, and sends ``CANCEL`` for piece 0 every ``cancel_every`` seconds (if given) while connected: a slot holder
    that never asks for anything."""

    def __init__(
        self, info: MetaInfo, name: str, clock: Clock, *, namespace: str = NAMESPACE, cancel_every: float | None = None
    ) -> None:
        self.info = info
        self.peer_id = bytes.fromhex(peer_id(name))
        self.namespace = namespace
        self.clock = clock
        self.cancel_every = cancel_every
        self.messages: list[wire.Message] = []
        self.lost_at: float | None = None
        self._decoder = wire.Decoder(self)
        self._timer: Any = None

    @property
    def lost(self) -> bool:
        return self.lost_at is not None

    @property
    def answered(self) -> bool:
        return any(isinstance(m, wire.Handshake) for m in self.messages)

    def errors(self) -> list[wire.Error]:
        return [m for m in self.messages if isinstance(m, wire.Error)]

    def connectionMade(self) -> None:
        info = self.info
        handshake = wire.Handshake(
            self.peer_id,
            bytes.fromhex(info.info_hash),
            self.namespace,
            bytes.fromhex(info.digest.hex),
            Bitfield(info.num_pieces),
        )
        self.write(handshake)
        if self.cancel_every is not None:
            self._timer = self.clock.callLater(self.cancel_every, self._cancel)

    def _cancel(self) -> None:
        assert self.cancel_every is not None
        self.write(wire.Cancel(0))
        self._timer = self.clock.callLater(self.cancel_every, self._cancel)

    def dataReceived(self, data: bytes) -> None:
        self._decoder.feed(data)

    def connectionLost(self, reason: object = None) -> None:
        self.lost_at = self.clock.seconds()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    def on_message(self, msg: wire.Message) -> None:
        self.messages.append(msg)

    def on_payload(self, index: int, chunk: wire.Chunk) -> None:
        pass

    def on_payload_end(self, index: int) -> None:
        pass

    def write(self, msg: wire.Message) -> None:
        assert self.transport is not None
        self.transport.writeSequence([bytes(c) for c in wire.encode(msg)])
