"""The build-index's Prometheus series, read at scrape time from its loops' counters (write-back to the
backends, copies to the other nodes, replication to remote clusters) and the replication backlog."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from kraken.buildindex.duplicate import Duplicator
from kraken.buildindex.remotes import Backlog, ReplicationStats, Replicator
from kraken.buildindex.writeback import TagWriteBack
from kraken.net.metrics import QueueCollector, StatsCollector, table

WRITEBACK = table("""
counter kraken_buildindex_writeback_uploaded_tags  uploaded  Tags written to a storage backend.
counter kraken_buildindex_writeback_existed_tags   existed   Tags the backend already had.
counter kraken_buildindex_writeback_failures       failures  Failed tag write-back tries (each retried).
counter kraken_buildindex_writeback_dropped        dropped   Tag write-back tasks dropped.
""")
DUPLICATES = table("""
counter kraken_buildindex_duplicate_sent      sent      Tag copies another build-index node accepted.
counter kraken_buildindex_duplicate_failures  failures  Failed tries to copy a tag to a node.
counter kraken_buildindex_duplicate_given_up  given_up  Tag copies a node refused every attempt.
counter kraken_buildindex_duplicate_dropped   dropped   Tag copies for nodes no longer configured.
""")


def _per_remote(field: str) -> Callable[[Any], dict[tuple[str, ...], float]]:
    """Read ``field`` of each remote's counters (``ReplicationStats.remotes``) or backlog (``Backlog``)."""

    def read(found: Any) -> dict[tuple[str, ...], float]:
        by_remote = found.remotes if isinstance(found, ReplicationStats) else found
        return {(name,): getattr(r, field) for name, r in by_remote.items()}

    return read


REPLICATION = table(
    """
counter kraken_buildindex_replication_tags           replicated     Tags put on a remote cluster.
counter kraken_buildindex_replication_sent_blobs     blobs_sent     Blobs uploaded to a remote's origins.
counter kraken_buildindex_replication_sent_bytes     bytes_sent     Bytes uploaded to a remote's origins.
counter kraken_buildindex_replication_present_blobs  blobs_present  Blobs a remote already had (not sent).
counter kraken_buildindex_replication_failures       failures       Failed replication tries (each tried again later).
""",
    _per_remote,
    ("remote",),
)
BACKLOG = table(
    """
gauge kraken_buildindex_replication_pending      pending  Replication copies queued, per remote.
gauge kraken_buildindex_replication_lag_seconds  lag      Age of the oldest queued copy, per remote (0 when none).
""",
    _per_remote,
    ("remote",),
)


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
    refresh: list[Callable[[], Any]] = []
    if writeback is not None:
        registry.register(StatsCollector(lambda: writeback.stats, WRITEBACK))
        queue = QueueCollector("kraken_buildindex_writeback", "Tag write-back", lambda: writeback.backlog())
        registry.register(queue)
        refresh.append(queue.refresh)
    if duplicator is not None:
        registry.register(StatsCollector(lambda: duplicator.stats, DUPLICATES))
    if replicator is None:
        return refresh
    registry.register(StatsCollector(lambda: replicator.stats, REPLICATION))
    backlog = BacklogCollector(replicator)
    registry.register(backlog)
    return [*refresh, backlog.refresh]
