"""The build-index's ``/metrics`` (write-back, duplication and replication counters; the replication
backlog read from the outbox before each scrape) and ``/readiness`` (its database and an origin answer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
from daemon_scrape import readiness, running, site_stub
from metrics_samples import scrape, value
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.web.resource import Resource

from kraken.buildindex.config import BuildIndexConfig
from kraken.buildindex.duplicate import DuplicateStats
from kraken.buildindex.metrics import register_build_index
from kraken.buildindex.remotes import Backlog, ReplicationStats
from kraken.buildindex.tap import build_index_service
from kraken.buildindex.writeback import TagWriteBackStats
from kraken.net.metrics import Observation, new_registry, observed


@attrs.define
class Loop:
    stats: Any


@attrs.define
class Replicator:
    stats: ReplicationStats
    queued: dict[str, Backlog]

    async def backlog(self) -> dict[str, Backlog]:
        return dict(self.queued)


def test_the_loops_counters_and_the_backlog_per_remote() -> None:
    replication = ReplicationStats()
    replication.add("west", replicated=2, blobs_sent=3, bytes_sent=4096)
    replication.add("east", blobs_present=5, failures=1)
    replicator = Replicator(replication, {"west": Backlog(4, 12.5), "east": Backlog()})
    registry = new_registry()
    writeback, duplicator = Loop(TagWriteBackStats(uploaded=3)), Loop(DuplicateStats(sent=2, given_up=1))
    refresh = register_build_index(registry, writeback, duplicator, replicator)  # type: ignore[arg-type]
    stub = StubTreq(observed(Resource(), Observation(registry, {}, clock=Clock(), refresh=refresh)))
    samples = scrape(stub)
    assert value(samples, "kraken_buildindex_writeback_uploaded_tags_total") == 3.0
    assert value(samples, "kraken_buildindex_duplicate_given_up_total") == 1.0
    assert value(samples, "kraken_buildindex_replication_sent_bytes_total", remote="west") == 4096.0
    assert value(samples, "kraken_buildindex_replication_present_blobs_total", remote="east") == 5.0
    assert value(samples, "kraken_buildindex_replication_pending", remote="west") == 4.0
    assert value(samples, "kraken_buildindex_replication_lag_seconds", remote="west") == 12.5
    assert value(samples, "kraken_buildindex_replication_lag_seconds", remote="east") == 0.0
    replicator.queued["west"] = Backlog()
    assert value(scrape(stub), "kraken_buildindex_replication_pending", remote="west") == 0.0


def test_the_build_index_is_not_ready_without_an_origin(tmp_path: Path) -> None:
    cfg = attrs.evolve(
        BuildIndexConfig(), listen_http="tcp:15004:interface=127.0.0.1", database=str(tmp_path / "tags.db")
    )
    reactor = MemoryReactorClock()
    with running(build_index_service(cfg, reactor)):
        stub = site_stub(reactor, 15004)
        samples = scrape(stub)
        code, doc = readiness(stub, reactor)
    assert value(samples, "kraken_buildindex_writeback_uploaded_tags_total") is None  # no backends: no loop
    assert code == 503
    assert "origin" in doc["down"]
