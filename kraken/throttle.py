"""Token buckets that cap a daemon's piece traffic, on an injected clock.

One bucket for egress and one for ingress per daemon. Before a piece
payload is sent (or read from a peer), the scheduler reserves its size:
``await bucket.reserve(n)``. Tokens accrue at ``rate`` bytes per second up
to ``burst``; a reservation larger than the burst is allowed and simply
waits for the time its bytes take at ``rate``. Waiters are served in
order, so a big piece cannot be starved by small ones. Only piece payloads
are metered; protocol headers are negligible.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

# Tokens are floats: a shortfall smaller than this is rounding, not a wait
# (waiting for it could schedule delays too small to move the clock).
_SLACK = 1e-6


class TokenBucket:
    def __init__(self, rate: float, burst: float, *, clock: IReactorTime) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock.seconds()
        self._waiters: deque[tuple[float, Deferred[None]]] = deque()
        self._timer: IDelayedCall | None = None

    def _refill(self) -> None:
        now = self._clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def reserve(self, n: float) -> Deferred[None]:
        """Fires when ``n`` bytes may pass. Cancelling gives the place up."""
        if n < 0:
            raise ValueError("cannot reserve a negative amount")
        self._refill()
        if not self._waiters and self._tokens + _SLACK >= min(n, self.burst):
            self._tokens -= n  # may go negative for n > burst: later callers wait it out
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        entry: tuple[float, Deferred[None]]

        def cancel(d: Deferred[None]) -> None:
            try:
                self._waiters.remove(entry)
            except ValueError:
                pass
            self._schedule()

        waiter: Deferred[None] = Deferred(cancel)
        entry = (n, waiter)
        self._waiters.append(entry)
        self._schedule()
        return waiter

    def set_rate(self, rate: float, burst: float) -> None:
        """Change the rate and burst from now on (tokens earned so far are kept, up to the new burst)."""
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self._refill()
        self.rate = rate
        self.burst = burst
        self._tokens = min(self._tokens, burst)
        self._schedule()

    def refund(self, n: float) -> None:
        """Give back ``n`` bytes reserved for traffic that did not happen (a cancelled piece)."""
        if n < 0:
            raise ValueError("cannot refund a negative amount")
        self._refill()
        self._tokens = min(self.burst, self._tokens + n)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._release()

    def _schedule(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self._waiters:
            return
        need = min(self._waiters[0][0], self.burst) - self._tokens
        self._timer = self._clock.callLater(max(0.0, need) / self.rate, self._release)

    def _release(self) -> None:
        self._timer = None
        self._refill()
        while self._waiters and self._tokens + _SLACK >= min(self._waiters[0][0], self.burst):
            n, d = self._waiters.popleft()
            self._tokens -= n
            d.callback(None)
        self._schedule()

    def close(self) -> None:
        """Stop the timer; pending reservations fail with CancelledError."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiters, self._waiters = self._waiters, deque()
        for _, d in waiters:
            d.errback(CancelledError("bandwidth limiter closed"))


class Unlimited:
    """The bucket to use when a limit is switched off."""

    def reserve(self, n: float) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    def refund(self, n: float) -> None:
        pass

    def close(self) -> None:
        pass
