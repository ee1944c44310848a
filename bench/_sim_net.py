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

**Cost.** Events run in (time, sequence number) order, as if each had its own place on one heap; three shortcuts
keep that order while doing less work (a run gives the same results with and without them):

- *Batches.* Events scheduled one after another for the same instant (a piece's ``HAVE`` to every connection)
  share one heap entry: nothing can come between them, since anything scheduled later gets a later number.
- *Lazy flow ends.* A flow whose rate changes takes a new end time and a new sequence number, but its heap entry is
  only replaced when the end moves earlier; an entry that comes up before the flow's end is pushed back to where the
  end now is (one ``heapreplace``), so a flow slowed down ten times costs one heap entry, not ten.
- *Compaction.* Cancelled events (timers stopped, flows closed) stay on the heap until it has doubled since the last
  time it was swept, then they are dropped at once: the heap holds mostly live entries.
"""

from __future__ import annotations

import functools
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


def _live(entry: tuple[float, int, Any]) -> bool:
    item = entry[2]
    if item.__class__ is list:
        return any(what.__class__ is tuple or what.fn is not None for what in item)
    return bool(item.entry_seq == entry[1])


class Loop:
    """The virtual clock and its events, run in time order (ties in the order they were scheduled).

    Heap entries are ``(time, sequence number, what)``: ``what`` is a list of events and ``(fn, args)`` messages
    (a batch: consecutive numbers from the entry's, all at ``time``) or a ``Flow`` (its end, or an earlier place it
    must be moved on from)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()
        self._batch: list[Any] | None = None  # the newest entry, while it waits on the heap
        self._batch_time = 0.0
        self._sweep_at = 1 << 16  # heap size at which cancelled entries are dropped
        self.events = 0

    def seconds(self) -> float:
        """The time now (``IReactorTime.seconds``, for the project's objects that ask a clock)."""
        return self.now

    def later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Event:
        """Call ``fn(*args)`` ``delay`` from now; the ``Event`` returned can cancel it."""
        event = Event(self.now + max(0.0, delay), fn, args)
        self._add(event.time, event)
        return event

    def post(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        """``later`` for a call that is never cancelled (a message): cheaper, nothing to keep."""
        self._add(self.now + max(0.0, delay), (fn, args))

    def _add(self, time: float, what: Event | tuple[Callable[..., Any], tuple[Any, ...]]) -> None:
        seq = next(self._seq)
        batch = self._batch
        if batch is not None and time == self._batch_time:
            batch.append(what)
            return
        batch = self._batch = [what]
        self._batch_time = time
        heap = self._heap
        heapq.heappush(heap, (time, seq, batch))
        if len(heap) >= self._sweep_at:
            self._sweep()

    callLater = later  # ``IReactorTime.callLater``, for the project's objects that take a clock (``PendingRequests``)

    def number(self) -> int:
        """The next sequence number, for an entry that is not a batch of events (it ends the open batch)."""
        self._batch = None
        return next(self._seq)

    def _sweep(self) -> None:
        """Drop the entries that would do nothing (their order is by unique keys, so the others' is unchanged)."""
        self._heap[:] = [entry for entry in self._heap if _live(entry)]
        heapq.heapify(self._heap)
        self._batch = None
        self._sweep_at = max(1 << 16, 2 * len(self._heap))

    def run(self, until: float = float("inf"), done: Callable[[], bool] = lambda: False) -> None:
        """Run events until none is left, the next is after ``until``, or ``done()``."""
        heap = self._heap
        pop, replace = heapq.heappop, heapq.heapreplace
        while heap and not done():
            entry = heap[0]
            time = entry[0]
            if time > until:
                break
            item = entry[2]
            if item.__class__ is not list:  # a flow
                seq = entry[1]
                if item.entry_seq != seq:  # closed, or moved to an earlier entry
                    pop(heap)
                elif item.due_seq != seq:  # its end moved later: go there
                    item.entry_seq, item.entry_time = item.due_seq, item.due
                    replace(heap, (item.due, item.due_seq, item))
                else:
                    pop(heap)
                    item.entry_seq = -1
                    self.now = time
                    self.events += 1
                    item.net._finish(item)
                continue
            pop(heap)
            if item is self._batch:
                self._batch = None
            first = True
            for n, what in enumerate(item):
                if what.__class__ is tuple:
                    fn, args = what
                else:
                    fn, args = what.fn, what.args
                    if fn is None:
                        continue
                    what.fn = None
                if not first and done():  # put the rest back where it was
                    if what.__class__ is not tuple:
                        what.fn = fn
                    heapq.heappush(heap, (time, entry[1] + n, item[n:]))
                    return
                first = False
                self.now = time
                self.events += 1
                fn(*args)


class _Link:
    __slots__ = ("cap", "flows", "share")

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.flows: dict[Flow, None] = {}  # ordered, for determinism
        self.share = cap  # cap / len(flows)

    def add(self, flow: Flow) -> None:
        self.flows[flow] = None
        self.share = self.cap / len(self.flows)

    def remove(self, flow: Flow) -> None:
        del self.flows[flow]
        if self.flows:
            self.share = self.cap / len(self.flows)


class Flow:
    """``size`` bytes from host ``src`` to host ``dst``; ``done()`` is called when the last byte has left the
    sender (the receiver has it ``latency`` later)."""

    __slots__ = (
        "done", "down", "dst", "due", "due_seq", "entry_seq", "entry_time", "net", "rate", "remaining", "size", "src",
        "up", "updated",
    )  # fmt: skip

    def __init__(self, net: Net, src: int, dst: int, size: int, done: Callable[[], None], now: float) -> None:
        self.net = net
        self.src = src
        self.dst = dst
        self.up = net._up[src]
        self.down = net._down[dst]
        self.size = size
        self.remaining = float(size)
        self.rate = 0.0
        self.updated = now
        self.done = done
        self.due = 0.0  # when the last byte leaves at the current rate, and that end's sequence number
        self.due_seq = -1
        self.entry_seq = -1  # the number and time of its entry on the loop's heap (-1: none)
        self.entry_time = 0.0


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
        self.send = functools.partial(loop.post, latency)  # type: ignore[method-assign]

    def add_host(self, up: float, down: float) -> int:
        """A host with an uplink of ``up`` and a downlink of ``down`` bytes per second; returns its number."""
        if up <= 0 or down <= 0:
            raise ValueError("caps must be positive")
        self._up.append(_Link(up))
        self._down.append(_Link(down))
        self.sent.append(0)
        return len(self._up) - 1

    def send(self, fn: Callable[..., Any], *args: Any) -> None:
        """Deliver a message: call ``fn(*args)`` one latency from now (replaced in ``__init__`` by the same call,
        made cheaper)."""
        self.loop.post(self.latency, fn, *args)

    def start(self, src: int, dst: int, size: int, done: Callable[[], None]) -> Flow:
        flow = Flow(self, src, dst, size, done, self.loop.now)
        flow.up.add(flow)
        flow.down.add(flow)
        self._rerate(flow.up, flow.down)
        return flow

    def cancel(self, flow: Flow) -> None:
        """Stop ``flow`` (its connection closed); ``done`` is not called."""
        flow.entry_seq = -1
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
        up, down = flow.up, flow.down
        if flow in up.flows:
            up.remove(flow)
            down.remove(flow)
            self._rerate(up, down)

    def _rerate(self, up: _Link, down: _Link) -> None:
        """New rates for the flows of two links; a flow's end is pushed on the heap only if it moved earlier."""
        loop = self.loop
        now, heap, number, push = loop.now, loop._heap, loop.number, heapq.heappush
        for link in (up, down):
            for flow in link.flows:
                a, b = flow.up.share, flow.down.share
                rate = a if a < b else b
                if rate == flow.rate:
                    continue
                remaining = flow.remaining - flow.rate * (now - flow.updated)
                remaining = flow.remaining = remaining if remaining > 0.0 else 0.0
                flow.updated = now
                flow.rate = rate
                due = flow.due = now + remaining / rate
                seq = flow.due_seq = number()
                if flow.entry_seq < 0 or due < flow.entry_time:
                    flow.entry_seq, flow.entry_time = seq, due
                    push(heap, (due, seq, flow))
