"""The P2P scheduler's counters (``kraken.p2p.torrent.Stats``) as Prometheus series, read at scrape time.

Agents and origins both register ``scheduler_collector(scheduler.stats)`` and
``download_collector(scheduler.download_durations)`` on their registry.
"""

from __future__ import annotations

from collections.abc import Callable

from kraken.net.histogram import Histogram, HistogramCollector
from kraken.net.metrics import Series, StatsCollector, table
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
    *table("""
counter kraken_p2p_sent_pieces          pieces_out           Pieces sent to peers.
counter kraken_p2p_sent_bytes           bytes_out            Bytes of pieces sent to peers.
counter kraken_p2p_corrupt_pieces       corrupt_pieces       Pieces received that failed their hash check.
counter kraken_p2p_duplicate_pieces     duplicate_pieces     Endgame copies that arrived after the first.
counter kraken_p2p_request_timeouts     requests_timed_out   Piece requests that timed out.
counter kraken_p2p_requests_refused     requests_refused     Piece requests a peer answered with an error.
counter kraken_p2p_requests_declined    requests_declined    Pieces declined to send again (super-seeding).
counter kraken_p2p_blacklisted_peers    peers_unreachable    Dialled peers blacklisted for being unreachable.
counter kraken_p2p_evicted_connections  connections_evicted  Connections closed for moving no piece.
counter kraken_p2p_downloads_completed  downloads_completed  Blob downloads completed.
gauge   kraken_p2p_torrents             torrents             Torrents open now.
gauge   kraken_p2p_connections          connections          Peer connections open now.
"""),
)  # fmt: skip


def scheduler_collector(stats: Callable[[], Stats]) -> StatsCollector:
    """The scheduler's series, read from ``stats()`` (``Scheduler.stats``) at each scrape."""
    return StatsCollector(stats, SERIES)


def download_collector(durations: Callable[[], dict[tuple[str, ...], Histogram]]) -> HistogramCollector:
    """``kraken_p2p_download_duration_seconds{size_class}``: blob downloads, from opening the torrent to the
    blob in the cache; ``size_class`` is the blob's size bound (``1MiB`` ... ``1GiB``, ``more``)."""
    doc = "Blob downloads, seconds from start to the blob in the cache, by size class."
    return HistogramCollector("kraken_p2p_download_duration_seconds", doc, durations, ("size_class",))
