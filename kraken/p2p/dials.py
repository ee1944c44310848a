"""Whom a torrent dials, and what a failed dial costs the peer: a pure policy object (no reactor, no I/O).

One ``Dials`` per torrent. The scheduler tells it about the dials it starts, the handshakes that complete and the
failures, and asks it which handed-out peers to dial now, whether a peer is blacklisted, and which peers it could
not reach (for the next announce). Time comes in as ``now`` arguments.

Policy:

- **What a failure costs.** A peer that answers ``BUSY`` is at capacity: it is skipped for ``busy_backoff``. A
  peer that breaks the protocol, refuses the blob or sends a corrupt piece is blacklisted for ``blacklist``. A
  peer that cannot be reached (the dial is refused, or closed before any handshake; the connect or the handshake
  does not complete within the handshake timeout; no route) gets a *strike*; a successful handshake clears its
  strikes. A refused dial is blacklisted for ``blacklist`` at the first strike and twice as long at each further
  one, up to ``blacklist_max``. A timeout is forgiven once: behind a saturated link a SYN or a handshake arrives
  late now and then (bench/netbench.py), and the peer, busy serving others, is the one most worth reaching, so
  the first timeout only backs off for ``busy_backoff``; the second in a row blacklists it for ``blacklist``,
  and each further one doubles that, up to ``blacklist_max``. A tarpit (accepts, never answers) is dialled at
  0, 10, 45, 110 and 235 s with the defaults, instead of every 10 s.
- **Reports.** A peer blacklisted for being unreachable is reported to the tracker with the next announce
  (``take_reports``), at most ``REPORT_LIMIT`` of them, newest kept.
- **Budget.** A pending dial holds one of the torrent's ``max_conns`` connection slots only for its first
  ``hold`` seconds: a dial that has not completed by then no longer keeps the torrent from dialling other peers
  or accepting them, so dead peers cannot use up the budget. Pending dials have their own bound,
  ``max_pending``. A dial that completes once the torrent is full is closed by the caller.
- **Order.** The caller dials handed-out peers in the tracker's order, except that peers with ``strikes`` go last.
"""

from __future__ import annotations

import enum

__all__ = ["REPORT_LIMIT", "Dials", "Outcome"]

#: The most unreachable peers one announce reports.
REPORT_LIMIT = 50


class Outcome(enum.Enum):
    """Why a dial or a connection failed, as far as the peer's standing goes."""

    BUSY = "busy"  # answered BUSY: at capacity, try again soon
    LATE = "late"  # the connect or the handshake timed out, or no route: maybe congestion
    REFUSED = "refused"  # connection refused, or closed before any handshake
    FAULT = "fault"  # broke the protocol, refused the blob, sent a corrupt piece


class Dials:
    """Dial bookkeeping of one torrent."""

    def __init__(
        self,
        *,
        max_conns: int,
        max_pending: int,
        hold: float,
        busy_backoff: float,
        blacklist: float,
        blacklist_max: float,
    ) -> None:
        if max_conns < 1 or max_pending < 1:
            raise ValueError("max_conns and max_pending must be at least 1")
        if min(hold, busy_backoff, blacklist) <= 0 or blacklist_max < blacklist:
            raise ValueError("durations must be positive, and blacklist_max at least blacklist")
        self._max_conns = max_conns
        self._max_pending = max_pending
        self._hold = hold
        self._busy_backoff = busy_backoff
        self._blacklist = blacklist
        self._blacklist_max = blacklist_max
        self._pending: dict[str, float] = {}  # peer -> when the dial started
        self._until: dict[str, float] = {}  # peer -> not dialled (nor accepted) before this time
        self._strikes: dict[str, int] = {}
        self._reports: dict[str, None] = {}  # ordered: oldest first
        self._quiet_since: dict[str, float] = {}  # peer with strikes -> first seen neither blocked nor pending

    # -- dialling ------------------------------------------------------------------------------------------------

    def started(self, peer: str, now: float) -> None:
        self._pending[peer] = now

    def pending(self, peer: str) -> bool:
        return peer in self._pending

    def pending_count(self) -> int:
        return len(self._pending)

    def holding(self, now: float) -> int:
        """How many pending dials hold a connection slot (those started less than ``hold`` ago)."""
        return sum(1 for started in self._pending.values() if now - started < self._hold)

    def room(self, conns: int, now: float) -> int:
        """How many dials may start now, with ``conns`` connections open."""
        return max(0, min(self._max_conns - conns - self.holding(now), self._max_pending - len(self._pending)))

    def connected(self, peer: str) -> None:
        """A handshake with ``peer`` completed (dialled or accepted): its strikes are cleared."""
        self._pending.pop(peer, None)
        self._strikes.pop(peer, None)
        self._quiet_since.pop(peer, None)

    def failed(self, peer: str, outcome: Outcome, now: float) -> tuple[float, bool]:
        """A dial to ``peer`` (or a connection with it) failed: returns (seconds it is skipped for, whether it was
        blacklisted as unreachable, and so will be reported)."""
        self._pending.pop(peer, None)
        unreachable = False
        if outcome is Outcome.BUSY:
            wait = self._busy_backoff
        elif outcome is Outcome.FAULT:
            wait = self._blacklist
        else:
            strikes = self._strikes[peer] = self._strikes.get(peer, 0) + 1
            if outcome is Outcome.LATE:
                strikes -= 1  # the first timeout is forgiven
            if strikes == 0:
                wait = self._busy_backoff
            else:
                wait = min(self._blacklist * 2 ** (strikes - 1), self._blacklist_max)
                unreachable = True
                self._reports.pop(peer, None)
                self._reports[peer] = None
                while len(self._reports) > REPORT_LIMIT:
                    del self._reports[next(iter(self._reports))]
        self._until[peer] = max(self._until.get(peer, 0.0), now + wait)
        return wait, unreachable

    def cancelled(self, peer: str) -> None:
        """A pending dial ended without a verdict (the dial lost a race with the peer's own dial to us)."""
        self._pending.pop(peer, None)

    # -- standing ------------------------------------------------------------------------------------------------

    def blocked(self, peer: str, now: float) -> bool:
        """Whether ``peer`` is blacklisted or backed off now."""
        return self._until.get(peer, 0.0) > now

    def strikes(self, peer: str) -> int:
        return self._strikes.get(peer, 0)

    def take_reports(self) -> list[str]:
        """The peers blacklisted as unreachable since the last call (at most ``REPORT_LIMIT``), oldest first."""
        reports = list(self._reports)
        self._reports.clear()
        return reports

    def expire(self, now: float) -> None:
        """Forget blacklist entries that have run out, and the strikes of a peer once ``blacklist_max`` has passed
        without it being blacklisted, backed off or dialled."""
        for peer, until in list(self._until.items()):
            if until <= now:
                del self._until[peer]
        for peer in list(self._strikes):
            if peer in self._until or peer in self._pending:
                self._quiet_since.pop(peer, None)
            elif now - self._quiet_since.setdefault(peer, now) >= self._blacklist_max:
                del self._strikes[peer], self._quiet_since[peer]
