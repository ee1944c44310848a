"""The origin's ``/metrics`` (kraken.origin.metrics and the P2P side's) and its readiness checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from daemon_scrape import get, running, site_stub
from metrics_samples import parse, requests, scrape, value
from prometheus_client import generate_latest
from results import result_of
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from kraken.net.metrics import new_registry
from kraken.origin.config import OriginConfig, StoreConfig
from kraken.origin.metrics import found_itself, register_origin, store_writable
from kraken.origin.tap import origin_service
from kraken.p2p.config import BandwidthConfig, OriginP2PConfig
from kraken.workers import InlineWorker


def config(tmp_path: Path) -> OriginConfig:
    p2p = OriginP2PConfig(listen="tcp:15998:interface=127.0.0.1", bandwidth=BandwidthConfig(enabled=False))
    store = StoreConfig(root=str(tmp_path / "state"))
    return attrs.evolve(OriginConfig(), listen_http="tcp:15999:interface=127.0.0.1", store=store, p2p=p2p)


def test_the_origin_service_serves_its_series(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    with running(origin_service(config(tmp_path), reactor)):
        stub = site_stub(reactor, 15999)
        assert get(stub, "/health")[0] == 200
        samples = scrape(stub)
    assert requests(samples, "/health", "GET", "2xx") == 1.0
    assert value(samples, "kraken_origin_ring_members") == 1.0  # alone: a ring of one
    assert value(samples, "kraken_origin_blob_heads_total") == 0.0
    assert value(samples, "kraken_p2p_sent_bytes_total") == 0.0
    assert value(samples, "kraken_origin_writeback_pending") is None  # no backends: no write-back series
    assert (
        (value(samples, "kraken_store_filesystem_size_bytes") or 0)
        >= (value(samples, "kraken_store_filesystem_free_bytes") or -1)
        > 0
    )


def test_every_section_present_gives_its_series() -> None:
    stats: dict[str, Any] = {
        "stat_batches": 1, "stat_batch_digests": 2, "blob_heads": 3,
        "cluster": {"members": 3, "unhealthy": 1, "replicated": 4, "replica_failures": 5},
        "writeback": {"queued": 6, "uploaded": 7, "existed": 8, "failures": 9, "dropped": 10, "missing": 11,
                      "pending": 12},
        "repair": {"walks": 1, "running": True, "checked": 20, "copies": 2, "copied_bytes": 2048, "failures": 0,
                   "outside": 1, "planned": 4, "done": 2},
    }  # fmt: skip
    registry = new_registry()
    register_origin(registry, lambda: stats)
    samples = parse(generate_latest(registry))
    assert value(samples, "kraken_origin_ring_unhealthy_members") == 1.0
    assert value(samples, "kraken_origin_replica_failures_total") == 5.0
    assert value(samples, "kraken_origin_writeback_pending") == 12.0
    assert value(samples, "kraken_origin_writeback_uploaded_blobs_total") == 7.0
    assert value(samples, "kraken_origin_repair_running") == 1.0
    assert value(samples, "kraken_origin_repair_copied_bytes_total") == 2048.0
    assert value(samples, "kraken_origin_stat_batch_digests_total") == 2.0


def test_the_store_is_writable_or_the_check_fails(tmp_path: Path) -> None:
    assert result_of(Deferred.fromCoroutine(store_writable(str(tmp_path), InlineWorker())())) is True  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []  # the probe is gone
    with pytest.raises(FileNotFoundError):
        result_of(Deferred.fromCoroutine(store_writable(str(tmp_path / "gone"), InlineWorker())()))  # type: ignore[arg-type]


def test_the_ring_must_have_found_this_origin() -> None:
    members: tuple[str, ...] = ()
    check = found_itself("o1:15002", lambda: members)
    assert result_of(Deferred.fromCoroutine(check())) is False  # type: ignore[arg-type]
    members = ("o1:15002", "o2:15002")
    assert result_of(Deferred.fromCoroutine(check())) is True  # type: ignore[arg-type]
