"""Which connections a daemon keeps: admission of inbound handshakes and eviction of slot holders. A pure policy
object (no reactor, no I/O); time comes in as ``now`` arguments.

One ``Slots`` per scheduler. Connections are opaque hashable keys grouped by torrent (also opaque keys); the
caller registers every open connection with the remote address it has (``opened``), reports *progress* on it
(``progress``: a piece sent to the peer or received from it) and asks, for an inbound handshake, whether to admit
it (``admit``) and, now and then, which connections to evict (``idle``). Requests, ``HAVE`` and ``CANCEL`` are not
progress: a peer that only cancels, or requests nothing, holds a slot without using it.

Policy:

- **Per address.** At most ``per_address`` connections of one torrent, and ``per_address_total`` connections over
  all torrents, come from (or go to) one remote IP address. Addresses in ``exempt`` are not counted: by default
  the loopback addresses, because every agent of a single-host herd, benchmark or test shares 127.0.0.1, and a
  process on this host is trusted as much as the daemon itself. A cluster runs one agent per host, which needs
  one connection per blob to a given peer.
- **Capacity.** A torrent has ``max_conns`` slots, taken by its open connections and by the pending dials the
  caller counts (``pending``). Below that, a handshake is admitted.
- **Newcomers.** When every slot is taken, a newcomer is still admitted if one holder is *useless*: it has been
  open for at least ``grace`` and made no progress in the last ``idle_after`` seconds (or ever), and the caller
  does not say it is ``busy`` (waiting for a piece from this side, or delivering one). The most useless holder
  (never useful, oldest first, then the one useful longest ago) is evicted for it. ``grace`` gives an honest
  newcomer time to ask for its first piece before the next newcomer may take its slot; ``idle_after`` keeps a
  peer that was useful a moment ago.
- **Peers far behind.** When every slot is taken and no holder is useless, a handshake from a peer the caller
  says is far ``behind`` (it has much less of the blob than this side) is still admitted, up to ``catch_up``
  connections over ``max_conns``. In a busy swarm every slot fills within seconds; a host that starts late, or
  whose first dials failed, then hears "at capacity" from everyone it reaches, and would wait for the swarm to
  finish before it could start.
- **Idle holders.** ``idle`` names the useless holders (no progress for ``idle_after``, not busy) to evict: all
  of them on a torrent this side has whole (a seeder gains nothing from them), and on a torrent it is still
  downloading only while its slots are all taken (so that it can dial or admit other peers).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Hashable
from typing import Generic, TypeVar

import attrs

__all__ = ["Admission", "Slots", "far_behind"]

K = TypeVar("K", bound=Hashable)
A = TypeVar("A", bound=Hashable)


def far_behind(have: int, theirs: int, pieces: int) -> bool:
    """Whether a peer holding ``theirs`` of ``pieces`` pieces is far behind a side holding ``have``: that side has
    at least a quarter of the blob, and the peer less than half as much. (At a swarm's start nobody is.)"""
    return have * 4 >= pieces and theirs * 2 < have


@attrs.frozen
class Admission(Generic[K]):
    """The answer to a handshake: admit it (after evicting ``evict``, if given) or refuse it for ``reason``;
    ``limited``: refused by a per-address limit (rather than for want of a slot)."""

    admit: bool
    reason: str = ""
    evict: K | None = None
    limited: bool = False


@attrs.define
class _Holder:
    torrent: Hashable
    address: str | None
    opened: float
    seq: int  # opening order, which breaks ties
    useful: float | None = None  # when it last made progress

    def idle_since(self) -> float:
        return self.opened if self.useful is None else self.useful


class Slots(Generic[K]):
    def __init__(
        self,
        *,
        max_conns: int,
        per_address: int,
        per_address_total: int,
        grace: float,
        idle_after: float,
        exempt: Collection[str],
        catch_up: int = 0,
    ) -> None:
        if min(max_conns, per_address, per_address_total) < 1 or catch_up < 0:
            raise ValueError("connection limits must be at least 1 (catch_up at least 0)")
        if grace < 0 or idle_after <= 0:
            raise ValueError("grace must not be negative and idle_after must be positive")
        self._max_conns = max_conns
        self._catch_up = catch_up
        self._per_address = per_address
        self._per_address_total = per_address_total
        self._grace = grace
        self._idle_after = idle_after
        self._exempt = frozenset(exempt)
        self._holders: dict[K, _Holder] = {}
        self._seq = itertools.count()
        self._by_torrent: dict[Hashable, set[K]] = {}
        self._by_address: dict[str, int] = {}
        self._by_torrent_address: dict[tuple[Hashable, str], int] = {}

    # -- connections ---------------------------------------------------------------------------------------------

    def opened(self, conn: K, torrent: Hashable, address: str | None, now: float) -> None:
        """``conn`` of ``torrent`` is open (after its handshake), with the peer at ``address`` (None: unknown)."""
        if conn in self._holders:
            raise ValueError(f"connection {conn!r} is already open")
        self._holders[conn] = _Holder(torrent, address, now, next(self._seq))
        self._by_torrent.setdefault(torrent, set()).add(conn)
        if address is not None and address not in self._exempt:
            self._by_address[address] = self._by_address.get(address, 0) + 1
            key = (torrent, address)
            self._by_torrent_address[key] = self._by_torrent_address.get(key, 0) + 1

    def closed(self, conn: K) -> None:
        """``conn`` is gone. Unknown connections are ignored."""
        holder = self._holders.pop(conn, None)
        if holder is None:
            return
        conns = self._by_torrent[holder.torrent]
        conns.discard(conn)
        if not conns:
            del self._by_torrent[holder.torrent]
        address = holder.address
        if address is not None and address not in self._exempt:
            _decrement(self._by_address, address)
            _decrement(self._by_torrent_address, (holder.torrent, address))

    def progress(self, conn: K, now: float) -> None:
        """A piece went to the peer of ``conn``, or came from it."""
        holder = self._holders.get(conn)
        if holder is not None:
            holder.useful = now

    # -- decisions -----------------------------------------------------------------------------------------------

    def admit(
        self,
        torrent: Hashable,
        address: str | None,
        now: float,
        *,
        pending: int = 0,
        busy: Collection[K] = (),
        behind: bool = False,
    ) -> Admission[K]:
        """Whether to admit a handshake for ``torrent`` from ``address``, with ``pending`` slots held by dials;
        ``behind``: the peer is far behind this side (``far_behind``)."""
        if address is not None and address not in self._exempt:
            if self._by_torrent_address.get((torrent, address), 0) >= self._per_address:
                why = f"{self._per_address} connections from {address} for this blob already"
                return Admission(False, why, limited=True)
            if self._by_address.get(address, 0) >= self._per_address_total:
                why = f"{self._per_address_total} connections from {address} already"
                return Admission(False, why, limited=True)
        used = len(self._by_torrent.get(torrent, ())) + pending
        if used < self._max_conns:
            return Admission(True)
        if behind and used < self._max_conns + self._catch_up:
            return Admission(True, "a peer far behind")
        # Evicting one makes room, catch-up connections or not (with pending dials counted, more may not).
        if used <= self._max_conns + self._catch_up:
            useless = self._useless(torrent, now, busy, self._grace)
            if useless:
                return Admission(True, "a newcomer needs the slot", useless[0])
        return Admission(False, "at capacity")

    def idle(
        self, torrent: Hashable, now: float, *, complete: bool, pending: int = 0, busy: Collection[K] = ()
    ) -> list[K]:
        """The connections of ``torrent`` to evict now for making no progress, most useless first."""
        conns = self._by_torrent.get(torrent, ())
        if not complete and len(conns) + pending < self._max_conns:
            return []
        return self._useless(torrent, now, busy, self._idle_after)

    def count(self, torrent: Hashable) -> int:
        return len(self._by_torrent.get(torrent, ()))

    def from_address(self, address: str, torrent: Hashable | None = None) -> int:
        """Connections counted against ``address`` (for ``torrent``, or over all)."""
        if torrent is None:
            return self._by_address.get(address, 0)
        return self._by_torrent_address.get((torrent, address), 0)

    # -- internals -----------------------------------------------------------------------------------------------

    def _useless(self, torrent: Hashable, now: float, busy: Collection[K], grace: float) -> list[K]:
        """Holders open for at least ``grace`` and without progress for ``idle_after``, not busy: those never
        useful first (oldest first), then those useful longest ago."""
        found: list[tuple[bool, float, int, K]] = []
        for conn in self._by_torrent.get(torrent, ()):
            holder = self._holders[conn]
            if conn in busy or now - holder.opened < grace:
                continue
            if holder.useful is not None and now - holder.useful < self._idle_after:
                continue
            found.append((holder.useful is not None, holder.idle_since(), holder.seq, conn))
        found.sort(key=lambda t: t[:3])
        return [conn for *_, conn in found]


def _decrement(counts: dict[A, int], key: A) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
