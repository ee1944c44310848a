"""The P2P scheduler's counters (``kraken.p2p.torrent.Stats``) as Prometheus series, read at scrape time.

Agents and origins both register ``scheduler_collector(scheduler.stats)`` on their registry.
"""

from __future__ import annotations

from collections.abc import Callable

from kraken.net.metrics import Series, StatsCollector, counter, gauge
from kraken.p2p.torrent import Stats


def _by_source(kind: str) -> Callable[[Stats], dict[tuple[str, ...], float]]:
    def read(st: Stats) -> dict[tuple[str, ...], float]:
        return {
            ("origin",): getattr(st, f"{kind}_in_from_origins"),
            ("agent",): getattr(st, f"{kind}_in_from_agents"),
        }

    return read


SERIES = (
    Series(
        "kraken_p2p_received_pieces", "Pieces received and verified, by source (origin, agent).", "counter",
        _by_source("pieces"), ("source",),
    ),
    Series(
        "kraken_p2p_received_bytes", "Bytes of verified pieces received, by source (origin, agent).", "counter",
        _by_source("bytes"), ("source",),
    ),
    counter("kraken_p2p_sent_pieces", "Pieces sent to peers.", "pieces_out"),
    counter("kraken_p2p_sent_bytes", "Bytes of pieces sent to peers.", "bytes_out"),
    counter("kraken_p2p_corrupt_pieces", "Pieces received that failed their hash check.", "corrupt_pieces"),
    counter("kraken_p2p_duplicate_pieces", "Endgame copies that arrived after the first.", "duplicate_pieces"),
    counter("kraken_p2p_request_timeouts", "Piece requests that timed out.", "requests_timed_out"),
    counter("kraken_p2p_requests_refused", "Piece requests a peer answered with an error.", "requests_refused"),
    counter("kraken_p2p_requests_declined", "Pieces declined to send again (super-seeding).", "requests_declined"),
    counter("kraken_p2p_blacklisted_peers", "Dialled peers blacklisted for being unreachable.", "peers_unreachable"),
    counter("kraken_p2p_evicted_connections", "Connections closed for moving no piece.", "connections_evicted"),
    counter("kraken_p2p_downloads_completed", "Blob downloads completed.", "downloads_completed"),
    gauge("kraken_p2p_torrents", "Torrents open now.", "torrents"),
    gauge("kraken_p2p_connections", "Peer connections open now.", "connections"),
)  # fmt: skip


def scheduler_collector(stats: Callable[[], Stats]) -> StatsCollector:
    """The scheduler's series, read from ``stats()`` (``Scheduler.stats``) at each scrape."""
    return StatsCollector(stats, SERIES)
