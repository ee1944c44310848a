"""The simulator's clock and network (``bench/simulate.py``): a heap of events on a virtual clock, and a flow-level
model of hosts with upload and download caps and a one-way latency. No sockets, no threads.

**Sharing.** Every host has two links, its uplink and its downlink, each with a capacity in bytes per second. A
flow (one piece on its way from one host to another) runs at ``min(up.cap / up.flows, down.cap / down.flows)``:
each link is shared equally among the flows crossing it, and a flow runs at the smaller of its two shares. The
rates are recomputed on every start and finish, for the flows of the two links that changed only, so an event
costs O(flows on two links) whatever the number of hosts. This is not max-min fairness: a link whose flows are
held back elsewhere keeps the rest of its capacity idle, where TCP (and progressive filling) would hand it to its
other flows. Max-min needs a global recomputation at every event (the bottleneck of one flow moves the rates of
flows many hops away), which is out of reach at 10,000 hosts and millions of pieces in Python; in a swarm of equal
caps, where every host's flows are mostly held back by the same kind of link, the difference is small, and it is
conservative (times are never shorter than max-min's). The validation table in bench/README.md shows how far off
it is.

**Latency.** A message (a request, ``HAVE``, a handshake, an announce) arrives ``latency`` after it is sent; a
piece's first byte ``latency`` after its flow starts and its last byte ``latency`` after the flow ends.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

__all__ = ["Event", "Flow", "Loop", "Net"]


class Event:
    """A call scheduled on the loop; ``cancel`` makes it a no-op."""

    __slots__ = ("args", "fn", "time")

    def __init__(self, time: float, fn: Callable[..., Any] | None, args: tuple[Any, ...]) -> None:
        self.time = time
        self.fn = fn
        self.args = args

    def cancel(self) -> None:
        self.fn = None

    def active(self) -> bool:
        return self.fn is not None


class Loop:
    """The virtual clock and its events, run in time order (ties in the order they were scheduled)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Event]] = []
        self._seq = itertools.count()
        self.events = 0

    def seconds(self) -> float:
        """The time now (``IReactorTime.seconds``, for the project's objects that ask a clock)."""
        return self.now

    def later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Event:
        event = Event(self.now + max(0.0, delay), fn, args)
        heapq.heappush(self._heap, (event.time, next(self._seq), event))
        return event

    def callLater(self, delay: float, fn: Callable[..., Any], *args: Any) -> Event:
        """``IReactorTime.callLater``, for the project's objects that take a clock (``PendingRequests``)."""
        return self.later(delay, fn, *args)

    def run(self, until: float = float("inf"), done: Callable[[], bool] = lambda: False) -> None:
        """Run events until none is left, the next is after ``until``, or ``done()``."""
        heap = self._heap
        while heap and not done():
            time, _, event = heap[0]
            if time > until:
                break
            heapq.heappop(heap)
            fn = event.fn
            if fn is None:
                continue
            event.fn = None
            self.now = time
            self.events += 1
            fn(*event.args)


class _Link:
    __slots__ = ("cap", "flows")

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.flows: dict[Flow, None] = {}  # ordered, for determinism


class Flow:
    """``size`` bytes from host ``src`` to host ``dst``; ``done()`` is called when the last byte has left the
    sender (the receiver has it ``latency`` later)."""

    __slots__ = ("done", "dst", "end", "rate", "remaining", "size", "src", "updated")

    def __init__(self, src: int, dst: int, size: int, done: Callable[[], None], now: float) -> None:
        self.src = src
        self.dst = dst
        self.size = size
        self.remaining = float(size)
        self.rate = 0.0
        self.updated = now
        self.done = done
        self.end: Event | None = None


class Net:
    """Hosts (numbered from 0 in the order they are added) and the flows between them, on ``loop``."""

    def __init__(self, loop: Loop, latency: float) -> None:
        if latency < 0:
            raise ValueError("latency must not be negative")
        self.loop = loop
        self.latency = latency
        self._up: list[_Link] = []
        self._down: list[_Link] = []
        self.sent: list[int] = []  # bytes each host has sent (flows finished)

    def add_host(self, up: float, down: float) -> int:
        """A host with an uplink of ``up`` and a downlink of ``down`` bytes per second; returns its number."""
        if up <= 0 or down <= 0:
            raise ValueError("caps must be positive")
        self._up.append(_Link(up))
        self._down.append(_Link(down))
        self.sent.append(0)
        return len(self._up) - 1

    def send(self, fn: Callable[..., Any], *args: Any) -> Event:
        """Deliver a message: call ``fn(*args)`` one latency from now."""
        return self.loop.later(self.latency, fn, *args)

    def start(self, src: int, dst: int, size: int, done: Callable[[], None]) -> Flow:
        flow = Flow(src, dst, size, done, self.loop.now)
        up, down = self._up[src], self._down[dst]
        up.flows[flow] = None
        down.flows[flow] = None
        self._rerate(up, down)
        return flow

    def cancel(self, flow: Flow) -> None:
        """Stop ``flow`` (its connection closed); ``done`` is not called."""
        if flow.end is not None:
            flow.end.cancel()
        self._remove(flow)

    def flows(self, host: int) -> tuple[int, int]:
        """How many flows leave and enter ``host``."""
        return len(self._up[host].flows), len(self._down[host].flows)

    def _finish(self, flow: Flow) -> None:
        flow.remaining = 0.0
        self.sent[flow.src] += flow.size
        self._remove(flow)
        flow.done()

    def _remove(self, flow: Flow) -> None:
        up, down = self._up[flow.src], self._down[flow.dst]
        if up.flows.pop(flow, 0) is None:
            down.flows.pop(flow, None)
            self._rerate(up, down)

    def _rerate(self, up: _Link, down: _Link) -> None:
        now = self.loop.now
        up_flows, down_flows = self._up, self._down
        for link in (up, down):
            for flow in link.flows:
                a, b = up_flows[flow.src], down_flows[flow.dst]
                rate = min(a.cap / len(a.flows), b.cap / len(b.flows))
                if rate == flow.rate and flow.end is not None:
                    continue
                flow.remaining = max(0.0, flow.remaining - flow.rate * (now - flow.updated))
                flow.updated = now
                flow.rate = rate
                if flow.end is not None:
                    flow.end.cancel()
                flow.end = self.loop.later(flow.remaining / rate, self._finish, flow)
