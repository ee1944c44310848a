"""Which piece to ask of which peer, for one torrent: a pure policy object (no reactor, no I/O).

The caller (the scheduler) feeds in what it learns from the peer sessions and asks what to request next; time is
passed in as ``now`` arguments, and randomness comes from an injected ``random.Random``.

Policy:

- **Rarest first.** For every piece we keep a count of the connected peers that have it, updated incrementally as
  peers join, announce pieces (``HAVE``), complete, or leave. When a peer has free request slots it is given the
  pieces it has, we lack and nobody is fetching, lowest count first; ties are broken at random so that peers
  starting together do not all chase the same piece.
- **Pipelining.** A peer has at most ``pipeline_limit`` requests outstanding; a new request is handed out only
  when one is answered, fails, expires or is cancelled. A request that times out halves that peer's limit (to no
  less than one) and every piece it delivers raises it by one again, up to ``pipeline_limit``: an overloaded
  peer, such as an origin that many agents ask at once, is asked for fewer pieces at a time instead of having
  requests pile up in its queue until they time out.
- **One requester per piece,** except in the **endgame**: once every piece we still lack has a request
  outstanding, or no more than ``endgame_threshold`` pieces are missing, an idle peer may also be asked for
  pieces that another peer is already fetching (those with the fewest requesters first). The threshold is 0 by
  default: Kraken's (the pipeline limit, 3) made the slowest of 50 agents slower in bench/swarm.py (1.27-1.32x
  of the ideal time against 1.25-1.26x) and sent the origin more duplicate pieces. When one copy arrives,
  ``piece_received`` names the other peers still fetching it so that the caller can send them ``CANCEL``.
- **Failures.** A piece that fails (bad hash, an ``ERROR`` answer) goes back to the pool, and that peer is never
  asked for that piece again (not even after it reconnects): a peer that could not deliver a piece once is unlikely
  to do better, and another peer will be tried. A request that times out also returns its piece to the pool, but
  the peer is only passed over for that piece for one more request timeout: a busy peer (an origin serving many)
  may be the only one that has it. ``expired`` returns the timed-out requests so that the caller can penalise the
  peer.
- **Departures.** A peer that leaves takes its counts out of the rarity table and returns its outstanding
  requests to the pool.

Cost: for each peer we keep the set of pieces it has and we lack, updated as it announces pieces and as pieces
arrive, so a request decision touches only that peer's candidates (set operations in C, then one key per
candidate that nobody is fetching), never the other pieces we lack nor the other peers; a piece received costs
``O(peers)``; joins and departures cost ``O(pieces)`` for that peer. Candidates are considered in the order in
which the first version walked its set of missing pieces, so that the injected random numbers go to the same
pieces and a seeded run makes the same choices.
"""

from __future__ import annotations

import heapq
import random
from itertools import repeat, starmap

from kraken.core import Bitfield

__all__ = ["Dispatcher"]


class Dispatcher:
    """Piece-request bookkeeping for one torrent of ``num_pieces`` pieces of which we hold ``have`` (copied).
    ``pipeline_limit`` and ``request_timeout`` come from the caller (``P2PConfig``)."""

    def __init__(
        self,
        num_pieces: int,
        have: Bitfield,
        *,
        pipeline_limit: int,
        request_timeout: float,
        endgame_threshold: int | None = None,  # None: 0
        rng: random.Random,
        stream_window: int = 0,
    ) -> None:
        if len(have) != num_pieces:
            raise ValueError(f"bitfield of {len(have)} bits for a torrent of {num_pieces} pieces")
        if pipeline_limit < 1:
            raise ValueError("pipeline_limit must be at least 1")
        if request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        self._num_pieces = num_pieces
        self._have = Bitfield(num_pieces, have.ones())
        self._missing: set[int] = set(have.zeros())
        # The order in which candidates get their random tie-breakers: the iteration order of ``_missing`` as
        # built (it only shrinks, so the order holds); None when that is ascending, as when starting from nothing.
        order = list(self._missing)
        self._rank: dict[int, int] | None = None if order == sorted(order) else {i: n for n, i in enumerate(order)}
        self._pipeline_limit = pipeline_limit
        self._endgame_threshold = 0 if endgame_threshold is None else endgame_threshold
        self._request_timeout = request_timeout
        self._rng = rng
        self._stream_window = stream_window
        self._reading: int | None = None  # the piece an in-order reader waits for (``reading``)
        self._peers: dict[str, Bitfield] = {}
        self._wanted: dict[str, set[int]] = {}  # per peer: the pieces it has that we lack
        self._limits: dict[str, int] = {}  # current pipeline limit of each peer
        self._max_limits: dict[str, int] = {}
        self._rarity = [0] * num_pieces
        # Outstanding requests, indexed both ways: piece -> {peer: sent at} and peer -> {piece: sent at}.
        self._by_piece: dict[int, dict[str, float]] = {}
        self._by_peer: dict[str, dict[int, float]] = {}
        # Pieces whose payload has arrived and is being verified: nobody is asked for them meanwhile.
        self._verifying: set[int] = set()
        # Pieces a peer failed to deliver: not asked of it again until the time given (inf: never).
        self._refused: dict[str, dict[int, float]] = {}

    # -- peers ---------------------------------------------------------------------------------------------------

    def peer_joined(self, peer_id: str, bitfield: Bitfield, *, pipeline_limit: int | None = None) -> None:
        """A connected peer with ``bitfield``; ``pipeline_limit`` overrides the torrent's (origins get more)."""
        if peer_id in self._peers:
            raise ValueError(f"peer {peer_id} already joined")
        if len(bitfield) != self._num_pieces:
            raise ValueError(f"bitfield of {len(bitfield)} bits for a torrent of {self._num_pieces} pieces")
        field = Bitfield(self._num_pieces, bitfield.ones())
        self._peers[peer_id] = field
        limit = self._pipeline_limit if pipeline_limit is None else max(1, pipeline_limit)
        self._limits[peer_id] = self._max_limits[peer_id] = limit
        self._by_peer[peer_id] = {}
        ones = list(field.ones())
        for i in ones:
            self._rarity[i] += 1
        self._wanted[peer_id] = self._missing.intersection(ones)

    def peer_left(self, peer_id: str) -> None:
        """Forget the peer; its outstanding requests return to the pool. Unknown peers are ignored."""
        field = self._peers.pop(peer_id, None)
        if field is None:
            return
        del self._limits[peer_id], self._max_limits[peer_id], self._wanted[peer_id]
        for i in field.ones():
            self._rarity[i] -= 1
        for index in self._by_peer.pop(peer_id):
            self._forget_request(peer_id, index)

    def peer_has(self, peer_id: str, index: int) -> None:
        """The peer announced piece ``index`` (``HAVE``)."""
        field = self._peers[peer_id]
        if not field[index]:
            field.set(index)
            self._rarity[index] += 1
            if index in self._missing:
                self._wanted[peer_id].add(index)

    def peer_complete(self, peer_id: str) -> None:
        """The peer has every piece (``COMPLETE``)."""
        field = self._peers[peer_id]
        for i in list(field.zeros()):
            field.set(i)
            self._rarity[i] += 1
        self._wanted[peer_id] = set(self._missing)

    # -- requests ------------------------------------------------------------------------------------------------

    def reading(self, index: int) -> None:
        """A client reads the blob in order and waits for piece ``index``: with a ``stream_window``, that piece and
        the ones after it (``stream_window`` in all) are asked for first, lowest first."""
        if self._stream_window:
            self._reading = index

    def _urgent(self, candidates: set[int], slots: int) -> list[int]:
        """Of ``candidates``, up to ``slots`` in the in-order reader's window, lowest first (taken out of them)."""
        at = self._reading
        if at is None or slots <= 0:
            return []
        window = range(at, min(at + self._stream_window, self._num_pieces))
        urgent = [i for i in window if i in candidates][:slots]
        candidates.difference_update(urgent)
        return urgent

    def next_requests(self, peer_id: str, now: float) -> list[int]:
        """The pieces to request of ``peer_id`` now (possibly none); they are recorded as outstanding at ``now``."""
        wanted = self._wanted[peer_id]
        mine = self._by_peer[peer_id]
        slots = self._limits[peer_id] - len(mine)
        if slots <= 0 or not self._missing:
            return []
        refused = {i for i, until in self._refused.get(peer_id, {}).items() if until > now}
        rarity = self._rarity
        rand = self._rng.random
        busy = self._verifying
        by_piece = self._by_piece
        candidates = wanted.difference(by_piece, busy, refused)
        urgent = self._urgent(candidates, slots) if self._reading is not None else []
        ordered = self._ordered(candidates)
        # (rarity, a random tie-breaker, piece) for each candidate in turn, built in C: one draw per candidate
        fresh = zip(map(rarity.__getitem__, ordered), starmap(rand, repeat((), len(ordered))), ordered, strict=True)
        chosen = urgent + [i for _, _, i in heapq.nsmallest(slots - len(urgent), fresh)]
        for index in chosen:
            self._add_request(peer_id, index, now)
        slots -= len(chosen)
        if slots > 0 and self.in_endgame():
            candidates = wanted.intersection(by_piece).difference(busy, mine, refused)
            duplicates = [(len(by_piece[i]), rarity[i], rand(), i) for i in self._ordered(candidates)]
            extra = [i for _, _, _, i in heapq.nsmallest(slots, duplicates)]
            for index in extra:
                self._add_request(peer_id, index, now)
            chosen.extend(extra)
        return chosen

    def piece_arrived(self, peer_id: str, index: int) -> None:
        """The payload of piece ``index`` has arrived from ``peer_id`` and is being verified: the peer's request
        slot is free at once, and nobody else is asked for the piece meanwhile. ``piece_received`` or
        ``piece_failed`` follows."""
        mine = self._by_peer.get(peer_id)
        if mine is None or mine.pop(index, None) is None:
            return
        self._forget_request(peer_id, index)
        if not self._have[index]:
            self._verifying.add(index)

    def piece_received(self, peer_id: str, index: int) -> list[str]:
        """Piece ``index`` arrived (and verified) from ``peer_id``; returns the other peers still fetching it,
        whom the caller should send ``CANCEL``. A piece we already had changes nothing and returns ``[]``."""
        self._verifying.discard(index)
        if self._have[index]:
            return []
        self._have.set(index)
        self._missing.discard(index)
        for wanted in self._wanted.values():
            wanted.discard(index)
        if peer_id in self._limits:
            self._limits[peer_id] = min(self._max_limits[peer_id], self._limits[peer_id] + 1)
        field = self._peers.get(peer_id)
        if field is not None and not field[index]:
            field.set(index)
            self._rarity[index] += 1
        others = []
        for other in self._by_piece.pop(index, {}):
            self._by_peer[other].pop(index, None)
            if other != peer_id:
                others.append(other)
        return sorted(others)

    def piece_failed(self, peer_id: str, index: int, *, until: float = float("inf"), slow: bool = False) -> None:
        """The peer sent a bad piece or an error for it: the piece returns to the pool, and is not asked of this
        peer again before ``until`` (never, by default). ``slow``: the request timed out, so the peer gets fewer
        requests at a time."""
        self._verifying.discard(index)
        if slow and peer_id in self._limits:
            self._limits[peer_id] = max(1, self._limits[peer_id] // 2)
        refused = self._refused.setdefault(peer_id, {})
        refused[index] = max(until, refused.get(index, until))
        mine = self._by_peer.get(peer_id)
        if mine is not None and mine.pop(index, None) is not None:
            self._forget_request(peer_id, index)

    def expired(self, now: float) -> list[tuple[str, int]]:
        """Remove and return the requests sent more than ``request_timeout`` before ``now``. Their pieces return to
        the pool and are not asked of the same peer again."""
        late = [
            (peer_id, index)
            for peer_id, requests in self._by_peer.items()
            for index, sent in requests.items()
            if now - sent > self._request_timeout
        ]
        for peer_id, index in late:
            self.piece_failed(peer_id, index, until=now + self._request_timeout, slow=True)
        return sorted(late)

    # -- state ---------------------------------------------------------------------------------------------------

    def complete(self) -> bool:
        return self._have.complete()

    def in_endgame(self) -> bool:
        """Whether some piece is still missing and either at most ``endgame_threshold`` are, or every one of them
        has a request outstanding or is being verified."""
        missing = len(self._missing)
        if not missing:
            return False
        return missing <= self._endgame_threshold or len(self._by_piece.keys() | self._verifying) == missing

    def have(self) -> Bitfield:
        """A copy of the pieces we hold."""
        return Bitfield(self._num_pieces, self._have.ones())

    def rarity(self, index: int) -> int:
        """How many connected peers have piece ``index``."""
        return self._rarity[index]

    def missing(self) -> int:
        """How many pieces we still lack."""
        return len(self._missing)

    def pipeline_limit(self, peer_id: str) -> int:
        """How many requests ``peer_id`` may have outstanding now."""
        return self._limits[peer_id]

    def outstanding(self, peer_id: str) -> frozenset[int]:
        """The pieces requested of ``peer_id`` and not yet answered."""
        return frozenset(self._by_peer.get(peer_id, {}))

    def requesters(self, index: int) -> frozenset[str]:
        """The peers with an outstanding request for piece ``index``."""
        return frozenset(self._by_piece.get(index, {}))

    # -- internals -----------------------------------------------------------------------------------------------

    def _ordered(self, pieces: set[int]) -> list[int]:
        """``pieces`` in the order ``_missing`` iterates (see ``_rank``)."""
        return sorted(pieces) if self._rank is None else sorted(pieces, key=self._rank.__getitem__)

    def _add_request(self, peer_id: str, index: int, now: float) -> None:
        self._by_peer[peer_id][index] = now
        self._by_piece.setdefault(index, {})[peer_id] = now

    def _forget_request(self, peer_id: str, index: int) -> None:
        """Drop ``peer_id`` from ``index``'s requesters (the caller has already updated ``_by_peer``)."""
        requesters = self._by_piece.get(index)
        if requesters is None:
            return
        requesters.pop(peer_id, None)
        if not requesters:
            del self._by_piece[index]
