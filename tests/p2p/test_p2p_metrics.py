"""The scheduler's counters as Prometheus series (kraken.p2p.metrics), read at scrape time."""

from __future__ import annotations

import attrs
from metrics_samples import parse, value
from prometheus_client import generate_latest
from swarm import blob, done

from kraken.net.metrics import new_registry
from kraken.p2p.metrics import download_collector, scheduler_collector
from kraken.p2p.torrent import Stats, size_class


def test_the_scheduler_series_follow_its_stats() -> None:
    stats = Stats(
        bytes_in=300, bytes_out=50, pieces_in=3, pieces_out=1, pieces_in_from_origins=1, pieces_in_from_agents=2,
        bytes_in_from_origins=100, bytes_in_from_agents=200, corrupt_pieces=4, duplicate_pieces=5,
        requests_timed_out=6, requests_refused=7, requests_declined=8, downloads_completed=9, peers_unreachable=10,
        connections_evicted=11, torrents=12, connections=13,
    )  # fmt: skip
    now = [stats]
    registry = new_registry()
    registry.register(scheduler_collector(lambda: now[0]))
    samples = parse(generate_latest(registry))
    assert value(samples, "kraken_p2p_received_pieces_total", source="origin") == 1.0
    assert value(samples, "kraken_p2p_received_pieces_total", source="agent") == 2.0
    assert value(samples, "kraken_p2p_received_bytes_total", source="origin") == 100.0
    assert value(samples, "kraken_p2p_received_bytes_total", source="agent") == 200.0
    expected = {
        "kraken_p2p_sent_pieces_total": 1, "kraken_p2p_sent_bytes_total": 50, "kraken_p2p_corrupt_pieces_total": 4,
        "kraken_p2p_duplicate_pieces_total": 5, "kraken_p2p_request_timeouts_total": 6,
        "kraken_p2p_requests_refused_total": 7, "kraken_p2p_requests_declined_total": 8,
        "kraken_p2p_downloads_completed_total": 9, "kraken_p2p_blacklisted_peers_total": 10,
        "kraken_p2p_evicted_connections_total": 11, "kraken_p2p_torrents": 12, "kraken_p2p_connections": 13,
    }  # fmt: skip
    assert {name: value(samples, name) for name in expected} == expected
    now[0] = attrs.evolve(stats, corrupt_pieces=5)  # each scrape reads the scheduler's stats afresh
    assert value(parse(generate_latest(registry)), "kraken_p2p_corrupt_pieces_total") == 5.0


def test_download_durations_are_a_histogram_by_size_class(swarm) -> None:
    _, info = blob(8)
    swarm.origin("origin", blob(8))
    agent = swarm.agent("agent")
    registry = new_registry()
    registry.register(download_collector(agent.scheduler.download_durations))
    start = swarm.clock.seconds()
    d = agent.download(info.digest)
    swarm.run(lambda: done(d))
    took = swarm.clock.seconds() - start
    samples = parse(generate_latest(registry))
    assert value(samples, "kraken_p2p_download_duration_seconds_count", size_class="1MiB") == 1.0
    assert 0 < value(samples, "kraken_p2p_download_duration_seconds_sum", size_class="1MiB") <= took


def test_size_classes_are_bounded() -> None:
    sizes = (0, 1 << 20, (1 << 20) + 1, 16 << 20, 300 << 20, 1 << 30, 5 << 30)
    assert [size_class(n) for n in sizes] == ["1MiB", "1MiB", "16MiB", "16MiB", "1GiB", "1GiB", "more"]
