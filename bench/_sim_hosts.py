"""The simulator's state of one host (``bench/simulate.py``, driven by ``_sim_p2p.World``): its blobs, torrents and
connections, and the project's policy objects each of them holds (``Dispatcher``, ``Ledger``, ``Dials``,
``PendingRequests`` per connection; ``Seeding`` and ``Slots`` per daemon), built from ``P2PConfig`` as
``kraken.p2p.torrent``, ``connections`` and ``scheduler`` build them."""

from __future__ import annotations

import hashlib
import operator
import random
from collections.abc import Callable

from _sim_net import Flow, Loop
from twisted.internet.defer import Deferred

from kraken.core import Bitfield
from kraken.core.metainfo import MetaInfo, PieceLengthRule
from kraken.core.peer import PeerInfo
from kraken.p2p.config import P2PConfig
from kraken.p2p.dials import Dials
from kraken.p2p.dispatch import Dispatcher
from kraken.p2p.pending import PendingRequests
from kraken.p2p.seeding import Ask, Ledger, Seeding
from kraken.p2p.slots import Slots

__all__ = ["Blob", "Conn", "Host", "Torrent", "alive", "copy", "holders", "ones", "writable"]


class Blob:
    """One blob of a scenario: its size and pieces (the origin's default piece length unless given). With
    ``data``, its pieces are real bytes, carried by the flows and checked on arrival against its metainfo."""

    def __init__(self, name: str, size: int, piece_length: int | None = None, data: bytes | None = None) -> None:
        self.name = name
        self.size = size
        self.piece_length = piece_length or PieceLengthRule.default().piece_length(size)
        self.num_pieces = max(1, -(-size // self.piece_length))
        self.info_hash = hashlib.sha1(name.encode()).hexdigest()
        self.info: MetaInfo | None = None
        self.data = data
        if data is not None:
            if len(data) != size:
                raise ValueError("data must be size bytes")
            self.info = MetaInfo.from_bytes(data, self.piece_length)

    def piece_size(self, index: int) -> int:
        return min(self.piece_length, self.size - index * self.piece_length)

    def payload(self, index: int) -> bytes | None:
        if self.data is None:
            return None
        start = index * self.piece_length
        return self.data[start : start + self.piece_length]


class Conn:
    """One side of a connection: ``torrent`` is this side's, ``peer`` the remote host, ``other`` the remote
    side."""

    __slots__ = (
        "open",
        "other",
        "payloads",
        "peer",
        "pending",
        "remote",
        "requests",
        "sending",
        "torrent",
        "withdraw",
        "writable",
    )

    def __init__(
        self, clock: Loop, withdraw: Callable[[Conn, int], None], torrent: Torrent, peer: Host, remote: Bitfield
    ) -> None:
        self.torrent = torrent
        self.peer = peer
        self.remote = remote  # the remote's pieces, as this side knows them
        self.other: Conn = self
        self.open = False
        self.sending: Flow | None = None  # the piece in the write buffer
        self.writable = True  # sending is None
        self.requests: dict[int, Deferred[int]] = {}  # the pieces asked of the peer
        self.payloads: dict[int, bytes | None] = {}  # a payload being handed over (with real bytes)
        self.pending = PendingRequests(clock=clock, timeout=torrent.timeout, cancel=self._cancel)  # type: ignore[arg-type]
        self.withdraw = withdraw

    def _cancel(self, index: int) -> None:
        self.withdraw(self, index)


class Torrent:
    """One host's state of one blob."""

    def __init__(self, host: Host, blob: Blob, complete: bool) -> None:
        c, n = host.config, blob.num_pieces
        self.host = host
        self.blob = blob
        self.timeout = c.request_timeout(blob.piece_length)
        self.have = Bitfield.full(n) if complete else Bitfield(n)
        self.complete = complete
        self.done_at: float | None = 0.0 if complete else None
        self.conns: dict[str, Conn] = {}
        self.holders = [0] * n  # per piece: how many of ``conns`` have it (as this side knows)
        self.ledger = Ledger(n, window=self.timeout)
        self.dials = Dials(
            max_conns=c.max_conns_per_torrent, max_pending=c.max_pending_dials, hold=c.dial_hold,
            busy_backoff=c.busy_backoff, blacklist=c.blacklist, blacklist_max=c.blacklist_max,
        )  # fmt: skip
        self.dispatcher: Dispatcher | None = None
        if not complete:
            self.dispatcher = Dispatcher(
                n, self.have, pipeline_limit=c.pipeline_limit, request_timeout=self.timeout, rng=host.rng
            )


class Host:
    """An origin or an agent: its policies (one ``Seeding`` and one ``Slots`` per daemon) and torrents."""

    def __init__(self, index: int, config: P2PConfig, origin: bool, rng: random.Random) -> None:
        c = config
        self.index = index
        self.config = config
        self.origin = origin
        self.rng = rng
        self.peer_id = f"{index + 1:040x}"
        self.ip = f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"
        self.info = PeerInfo(self.peer_id, self.ip, 16001, origin=origin)
        self.seeding: Seeding[Conn] = Seeding(super_seed=c.super_seed, whole_copy_first=origin)
        self.slots: Slots[Conn] = Slots(
            max_conns=c.max_conns_per_torrent, per_address=c.max_conns_per_address,
            per_address_total=c.max_conns_per_address_total, grace=c.slot_grace, idle_after=c.slot_idle,
            exempt=c.address_limit_exempt, catch_up=c.catch_up_conns,
        )  # fmt: skip
        self.torrents: dict[str, Torrent] = {}
        self.started = 0.0

    def done_at(self) -> float | None:
        times = [t.done_at for t in self.torrents.values()]
        return None if not times or None in times else max(t for t in times if t is not None)


alive: Callable[[Conn], bool] = operator.attrgetter("open")  # as functions, but called from C
writable: Callable[[Conn], bool] = operator.attrgetter("writable")


def holders(ask: Ask[Conn]) -> int:
    """How many of the torrent's connected peers have the piece."""
    return ask.conn.torrent.holders[ask.index]


_BITS = [tuple(i for i in range(8) if byte & (0x80 >> i)) for byte in range(256)]


def ones(field: Bitfield) -> list[int]:
    """``field.ones()``, a byte at a time."""
    return [8 * n + i for n, byte in enumerate(field.to_bytes()) if byte for i in _BITS[byte]]


def copy(field: Bitfield) -> Bitfield:
    return Bitfield.from_bytes(len(field), field.to_bytes())
