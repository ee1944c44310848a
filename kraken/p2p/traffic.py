"""What one torrent has moved, for the announce's ``progress`` (the tracker's live swarm page).

A ``Traffic`` counts the bytes of verified pieces a torrent received (in all and from each peer) and the bytes of
pieces it sent. ``report`` turns them, with the torrent's pieces, into the announce's ``progress`` object, its
rates taken over the time since the previous report. Counting is two additions per piece; the report is built
only when an announce is sent (``kraken.p2p.announce``), never per piece.
"""

from __future__ import annotations

from typing import Any

#: At most this many peers are counted as sources of one torrent; pieces from peers past it count in ``bytes_in``
#: only.
MAX_TRACKED = 256
#: A report names at most this many sources (those that sent the most); the tracker refuses more.
MAX_REPORTED = 16


class Source:
    __slots__ = ("bytes", "origin", "reported")

    def __init__(self, origin: bool) -> None:
        self.origin = origin
        self.bytes = 0
        self.reported = 0  # ``bytes`` at the previous report


class Traffic:
    """Bytes a torrent received (from each peer) and sent, and the counters at the previous report."""

    __slots__ = ("_last", "bytes_in", "bytes_out", "sources")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        self.sources: dict[str, Source] = {}
        self._last: tuple[float, int, int] | None = None  # (when, bytes_in, bytes_out) of the previous report

    def received(self, peer_id: str, size: int, origin: bool) -> None:
        """A verified piece of ``size`` bytes came from ``peer_id`` (an origin or not)."""
        self.bytes_in += size
        source = self.sources.get(peer_id)
        if source is None:
            if len(self.sources) >= MAX_TRACKED:
                return
            source = self.sources[peer_id] = Source(origin)
        source.bytes += size

    def sent(self, size: int) -> None:
        self.bytes_out += size

    def report(self, now: float, have: int, pieces: int) -> dict[str, Any]:
        """The announce's ``progress``: pieces, bytes, rates (bytes per second since the previous report; 0 at
        the first) and the ``MAX_REPORTED`` sources that sent the most."""
        last, self._last = self._last, (now, self.bytes_in, self.bytes_out)
        span = now - last[0] if last is not None else 0.0

        def rate(now_bytes: int, then_bytes: int) -> float:
            return round((now_bytes - then_bytes) / span, 1) if span > 0 else 0.0

        top = sorted(self.sources.items(), key=lambda item: item[1].bytes, reverse=True)[:MAX_REPORTED]
        sources = [
            {"peer_id": peer_id, "origin": s.origin, "bytes": s.bytes, "rate": rate(s.bytes, s.reported)}
            for peer_id, s in top
        ]
        for s in self.sources.values():
            s.reported = s.bytes
        return {
            "have": have,
            "pieces": pieces,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "rate_in": rate(self.bytes_in, last[1] if last else 0),
            "rate_out": rate(self.bytes_out, last[2] if last else 0),
            "sources": sources,
        }
