"""The build-index's Prometheus series, read at scrape time from its loops' counters (write-back to the
backends, copies to the other nodes, replication to remote clusters) and the replication backlog."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from kraken.buildindex.duplicate import Duplicator
from kraken.buildindex.remotes import Backlog, Replicator
from kraken.buildindex.writeback import TagWriteBack
from kraken.net.metrics import Series, StatsCollector, counter

WRITEBACK = (
    counter("kraken_buildindex_writeback_uploaded_tags", "Tags written to a storage backend.", "uploaded"),
    counter("kraken_buildindex_writeback_existed_tags", "Tags the backend already had.", "existed"),
    counter("kraken_buildindex_writeback_failures", "Failed tag write-back tries (each retried).", "failures"),
    counter("kraken_buildindex_writeback_dropped", "Tag write-back tasks dropped.", "dropped"),
)
DUPLICATES = (
    counter("kraken_buildindex_duplicate_sent", "Tag copies another build-index node accepted.", "sent"),
    counter("kraken_buildindex_duplicate_failures", "Failed tries to copy a tag to a node.", "failures"),
    counter("kraken_buildindex_duplicate_given_up", "Tag copies a node refused every attempt.", "given_up"),
    counter("kraken_buildindex_duplicate_dropped", "Tag copies for nodes no longer configured.", "dropped"),
)


def _per_remote(field: str) -> Callable[[Any], dict[tuple[str, ...], float]]:
    def read(stats: Any) -> dict[tuple[str, ...], float]:
        return {(name,): getattr(r, field) for name, r in stats.remotes.items()}

    return read


REPLICATION = tuple(
    Series(name, doc, "counter", _per_remote(field), ("remote",))
    for name, doc, field in (
        ("kraken_buildindex_replication_tags", "Tags put on a remote cluster.", "replicated"),
        ("kraken_buildindex_replication_sent_blobs", "Blobs uploaded to a remote's origins.", "blobs_sent"),
        ("kraken_buildindex_replication_sent_bytes", "Bytes uploaded to a remote's origins.", "bytes_sent"),
        ("kraken_buildindex_replication_present_blobs", "Blobs a remote already had (not sent).", "blobs_present"),
        ("kraken_buildindex_replication_failures", "Failed replication tries (each tried again later).", "failures"),
    )
)


def _backlog(field: str) -> Callable[[dict[str, Backlog]], dict[tuple[str, ...], float]]:
    def read(backlog: dict[str, Backlog]) -> dict[tuple[str, ...], float]:
        return {(name,): getattr(b, field) for name, b in backlog.items()}

    return read


BACKLOG = (
    Series(
        "kraken_buildindex_replication_pending", "Replication copies queued, per remote.", "gauge",
        _backlog("pending"), ("remote",),
    ),
    Series(
        "kraken_buildindex_replication_lag_seconds", "Age of the oldest queued copy, per remote (0: none).", "gauge",
        _backlog("lag"), ("remote",),
    ),
)  # fmt: skip


class BacklogCollector(StatsCollector):
    """The replication backlog per remote, read from the outbox (SQLite) by ``refresh`` before a scrape."""

    def __init__(self, replicator: Replicator) -> None:
        super().__init__(lambda: self.last, BACKLOG)
        self._replicator = replicator
        self.last: dict[str, Backlog] | None = None

    async def refresh(self) -> None:
        self.last = await self._replicator.backlog()


def register_build_index(
    registry: CollectorRegistry,
    writeback: TagWriteBack | None,
    duplicator: Duplicator | None,
    replicator: Replicator | None,
) -> list[Callable[[], Any]]:
    """The build-index's series on ``registry`` (those of the loops it runs); the refreshers to run before a
    scrape."""
    if writeback is not None:
        registry.register(StatsCollector(lambda: writeback.stats, WRITEBACK))
    if duplicator is not None:
        registry.register(StatsCollector(lambda: duplicator.stats, DUPLICATES))
    if replicator is None:
        return []
    registry.register(StatsCollector(lambda: replicator.stats, REPLICATION))
    backlog = BacklogCollector(replicator)
    registry.register(backlog)
    return [backlog.refresh]
