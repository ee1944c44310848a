"""What a seeder sends next, and to whom: a pure policy object (no reactor, no I/O), beside ``dispatch.py``
(which piece to ask of whom). Time comes in as ``now`` arguments.

One ``Seeding`` per scheduler holds the outbox: the pieces peers asked this daemon for, over all its torrents. One
``Ledger`` per torrent remembers what that torrent has sent. The seed driver (``kraken.p2p.seed``) queues each
request (``ask``), drops those a peer cancels or whose connection goes (``cancel``, ``drop``), takes the next piece
to send (``next``), asks whether to decline it (``declines``), and tells the torrent's ledger about each piece it
sends (``Ledger.sent``) and when that piece left the connection's write buffer (``Ledger.left``). Connections are
opaque hashable keys; what the policy needs to know of them (whether one is still open, whether its write buffer
has room, how many of the torrent's peers hold a piece) the driver answers through callables.

Policy:

- **Order.** Of the requests whose connection can take more, the piece fewest of the torrent's peers have goes
  first, then the one the torrent has sent the fewest times, then the oldest request: a seeder facing many
  leechers sends every piece once before it sends any twice, so the swarm holds a whole copy as early as possible
  and trades the rest among itself, and what is rare around a peer leaves it first. Requests of connections that
  are closed or going are dropped: a transport stops its producer (failing ``when_writable``) before the protocol
  hears of the loss, and a request kept then would be waited for again at once, for ever.
- **Super-seeding** (``super_seed``, on a torrent this side holds whole): a piece sent within the ledger's
  ``window`` (one request timeout) to a peer that is still connected is declined (``PIECE_UNAVAILABLE``): that
  peer is passing it on, and the requester asks it again later if it must. The time counts from when the piece
  left the write buffer (``Ledger.left``); until then it is still on its way. With ``whole_copy_first`` (an
  origin) such a piece is declined whatever the time until every piece has been sent once: behind a link that is
  slower than its peers' demand, each copy sent twice delays the moment the swarm holds the whole blob. A peer
  may always ask again for a piece it was sent itself.
- **Uplink pacing** (to come) belongs in ``Seeding.next``: the one place that decides which request goes next.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Container, Hashable
from typing import Generic, TypeVar

import attrs

__all__ = ["Ask", "Ledger", "Seeding"]

C = TypeVar("C", bound=Hashable)


class Ledger:
    """What one torrent of ``num_pieces`` pieces has sent: copies of each piece, and whom each piece went to last
    and when it left (``inf`` while it waits in a write buffer). ``window``: how long a piece just sent is declined
    to others (super-seeding)."""

    def __init__(self, num_pieces: int, *, window: float) -> None:
        if num_pieces < 0 or window <= 0:
            raise ValueError("num_pieces must not be negative and window must be positive")
        self.num_pieces = num_pieces
        self.window = window
        self._copies: dict[int, int] = {}
        self._last: dict[int, tuple[float, str, int]] = {}  # piece -> (when it left, to whom, token)
        self._tokens = itertools.count()

    def sent(self, index: int, peer: str) -> tuple[int, bool]:
        """Piece ``index`` is handed to ``peer``'s connection: returns the token to pass to ``left`` once it has
        left the write buffer, and whether this copy completes the first whole copy of the blob."""
        copies = self._copies[index] = self._copies.get(index, 0) + 1
        token = next(self._tokens)
        self._last[index] = (float("inf"), peer, token)
        return token, copies == 1 and len(self._copies) == self.num_pieces

    def left(self, index: int, token: int, now: float) -> None:
        """The copy of ``sent``'s ``token`` left the write buffer at ``now`` (ignored if the piece went out again
        since)."""
        last = self._last.get(index)
        if last is not None and last[2] == token:
            self._last[index] = (now, last[1], token)

    def copies(self, index: int) -> int:
        return self._copies.get(index, 0)

    def every_piece_sent(self) -> bool:
        return len(self._copies) >= self.num_pieces

    def last(self, index: int) -> tuple[float, str] | None:
        """(when piece ``index`` last left, to whom), or None if it was never sent."""
        last = self._last.get(index)
        return None if last is None else (last[0], last[1])


@attrs.define(eq=False)
class Ask(Generic[C]):
    """A piece ``peer`` asked for on ``conn``, waiting in the outbox (``seq``: arrival order)."""

    ledger: Ledger
    conn: C
    peer: str
    index: int
    seq: int
    cancelled: bool = False


class Seeding(Generic[C]):
    """The outbox of one scheduler and its choices (see the module docstring)."""

    def __init__(self, *, super_seed: bool, whole_copy_first: bool) -> None:
        self._super_seed = super_seed
        self._whole_copy_first = whole_copy_first
        self._outbox: list[Ask[C]] = []
        self._seq = itertools.count()

    # -- the outbox ----------------------------------------------------------------------------------------------

    def ask(self, ledger: Ledger, conn: C, peer: str, index: int) -> Ask[C]:
        """``peer`` asks on ``conn`` for piece ``index`` of the torrent of ``ledger``."""
        ask = Ask(ledger, conn, peer, index, next(self._seq))
        self._outbox.append(ask)
        return ask

    def cancel(self, conn: C, index: int) -> None:
        """The peer of ``conn`` no longer wants piece ``index``."""
        self._outbox = [a for a in self._outbox if not (a.conn == conn and a.index == index)]

    def drop(self, conn: C) -> None:
        """``conn`` is closing: forget its requests."""
        self._outbox = [a for a in self._outbox if a.conn != conn]

    def waiting(self) -> list[Ask[C]]:
        """The requests in the outbox, oldest first."""
        return list(self._outbox)

    def __bool__(self) -> bool:
        return bool(self._outbox)

    # -- decisions -----------------------------------------------------------------------------------------------

    def next(
        self, *, alive: Callable[[C], bool], writable: Callable[[C], bool], holders: Callable[[Ask[C]], int]
    ) -> Ask[C] | None:
        """Take the next request to answer out of the outbox: the piece fewest of the torrent's peers have
        (``holders``), then the one the torrent has sent fewest times, then the oldest; None while every connection
        with a request waiting has a full write buffer (``writable``). Requests of connections no longer ``alive``
        are dropped. Uplink pacing goes here."""
        self._outbox = [a for a in self._outbox if alive(a.conn)]
        ready = [a for a in self._outbox if writable(a.conn)]
        if not ready:
            return None
        spread: dict[tuple[int, int], int] = {}

        def rarity(ask: Ask[C]) -> int:
            key = (id(ask.ledger), ask.index)
            if key not in spread:
                spread[key] = holders(ask)
            return spread[key]

        chosen = min(ready, key=lambda a: (rarity(a), a.ledger.copies(a.index), a.seq))
        self._outbox.remove(chosen)
        return chosen

    def declines(self, ask: Ask[C], *, complete: bool, connected: Container[str], now: float) -> bool:
        """Whether to decline ``ask`` (super-seeding): ``complete``, whether this side holds the torrent whole;
        ``connected``, the peers of the torrent connected now."""
        if not self._super_seed or not complete:
            return False
        last = ask.ledger.last(ask.index)
        if last is None:
            return False
        when, peer = last
        if peer == ask.peer or peer not in connected:
            return False
        if self._whole_copy_first and not ask.ledger.every_piece_sent():
            return True  # an origin sends every piece once before it sends any twice to peers still connected
        return now - when < ask.ledger.window
