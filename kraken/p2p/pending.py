"""The piece requests one ``PeerSession`` has outstanding: sans-IO bookkeeping, with timers on an injected clock.

Owns, for one connection: each request's Deferred, payload sink and timer; the requests cancelled on this side
whose answer may still come (the *discard* set: their payload is read and dropped, not a violation); and which
payload is streaming in. The session (``kraken.p2p.session``) checks its state, sends the frames and calls in.

The request timeout only runs while the connection is quiet: while any payload streams in, the timers of the
requests waiting behind it stop, and they start afresh when it ends. A peer that sends one piece after another at
the pace of a slow or shared link is busy, not unresponsive, and a pipelined request does not time out merely
because it waited its turn. A piece that has started is left to the session's idle timeout.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from kraken.p2p.wire import Chunk

__all__ = ["PendingRequests"]


@attrs.define
class _Request:
    deferred: Deferred[int]
    sink: Callable[[Chunk], None]
    timer: IDelayedCall | None = None
    received: int = 0

    def stop_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class PendingRequests:
    """``cancel(index)`` is the session's way to withdraw a request (it calls ``withdraw`` and sends ``CANCEL``):
    called when a request's Deferred is cancelled or its timer runs out."""

    def __init__(self, *, clock: IReactorTime, timeout: float, cancel: Callable[[int], None]) -> None:
        self._clock = clock
        self._timeout = timeout
        self._cancel = cancel
        self._pending: dict[int, _Request] = {}
        self._discard: set[int] = set()  # requests cancelled on our side whose answer may still come
        self._receiving: int | None = None  # the index whose payload is streaming in
        self._streaming = False  # a payload is streaming in, wanted or not: the request timers wait

    def __contains__(self, index: int) -> bool:
        return index in self._pending

    def add(self, index: int, sink: Callable[[Chunk], None]) -> Deferred[int]:
        """A new request for piece ``index``, its payload to go to ``sink``; ``arm`` it once it is sent."""
        d: Deferred[int] = Deferred(lambda _: self._cancel(index))
        self._pending[index] = _Request(d, sink)
        self._discard.discard(index)
        return d

    def arm(self, index: int) -> None:
        """Start the timer of the request just sent, unless a payload is streaming in."""
        if not self._streaming and index in self._pending:
            self._pending[index].timer = self._clock.callLater(self._timeout, self._timed_out, index)

    def withdraw(self, index: int, *, open: bool) -> bool:
        """Forget the request for ``index``; True if the peer should hear ``CANCEL`` (the connection is ``open``
        and the request was outstanding). An answer that has not started yet will be discarded."""
        request = self._pending.pop(index, None)
        if request is not None:
            request.stop_timer()
        if request is None or not open:
            return False
        if self._receiving != index:  # an answer already streaming in is simply dropped
            self._discard.add(index)
        return True

    def started(self, index: int) -> bool:
        """A payload for ``index`` starts: False if it was never requested (nor cancelled), a violation."""
        if index in self._pending:
            self._receiving = index  # it is coming: the idle timeout watches it from here
        elif index in self._discard:
            self._discard.discard(index)
            self._receiving = None
        else:
            return False
        self._streaming = True  # no request times out while it streams in
        for request in self._pending.values():
            request.stop_timer()
        return True

    def chunk(self, index: int, chunk: Chunk) -> None:
        request = self._pending.get(index) if self._receiving == index else None
        if request is not None:
            request.received += len(chunk)
            request.sink(chunk)

    def ended(self, index: int) -> None:
        """A payload ended: its request is answered, and the requests that waited behind it get a whole request
        timeout from now."""
        self._streaming = False
        request = None
        if self._receiving == index:
            self._receiving = None
            request = self._pending.pop(index, None)
        for waiting, other in self._pending.items():
            if other.timer is None:
                other.timer = self._clock.callLater(self._timeout, self._timed_out, waiting)
        if request is not None:
            request.stop_timer()
            request.deferred.callback(request.received)

    def refused(self, index: int, error: Exception) -> None:
        """The peer answered the request for ``index`` with ``error``."""
        self._discard.discard(index)
        request = self._pending.pop(index, None)
        if request is not None:
            request.stop_timer()
            request.deferred.errback(error)

    def fail_all(self, error: Callable[[], Exception]) -> None:
        """The connection is closing: every request fails with a fresh ``error()``."""
        pending, self._pending = self._pending, {}
        self._receiving = None
        for request in pending.values():
            request.stop_timer()
            request.deferred.errback(Failure(error()))

    def _timed_out(self, index: int) -> None:
        request = self._pending.get(index)
        if request is None:
            return
        request.timer = None
        self._cancel(index)
        request.deferred.errback(TimeoutError(f"piece {index} did not start within {self._timeout:g} s"))
