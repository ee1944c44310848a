"""The origin's Prometheus series and readiness checks, read from ``OriginNode.stats()`` at scrape time.

The P2P side's series are ``kraken.p2p.metrics``'s; these are the node's own counters and its
``cluster``, ``writeback`` and ``repair`` sections (each only when the origin has that part).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from kraken.net.metrics import Check, StatsCollector, counter, gauge
from kraken.workers import Worker

NODE = (
    counter("kraken_origin_stat_batches", "Batched stat questions answered.", "stat_batches"),
    counter(
        "kraken_origin_stat_batch_digests", "Digests the batched stat questions asked about.", "stat_batch_digests"
    ),
    counter("kraken_origin_blob_heads", "Questions about one blob's size (HEAD) answered.", "blob_heads"),
)
CLUSTER = (
    gauge("kraken_origin_ring_members", "Members of the origin ring now.", "members"),
    gauge("kraken_origin_ring_unhealthy_members", "Ring members marked unhealthy now.", "unhealthy"),
    counter("kraken_origin_replicated_blobs", "Copies sent to (or already held by) a replica.", "replicated"),
    counter("kraken_origin_replica_failures", "Copies to a replica that failed.", "replica_failures"),
)
WRITEBACK = (
    counter("kraken_origin_writeback_queued", "Write-back tasks added.", "queued"),
    counter("kraken_origin_writeback_uploaded_blobs", "Blobs written back to a storage backend.", "uploaded"),
    counter("kraken_origin_writeback_existed_blobs", "Blobs the backend already had.", "existed"),
    counter("kraken_origin_writeback_failures", "Failed write-back attempts (each retried later).", "failures"),
    counter("kraken_origin_writeback_dropped", "Write-back tasks dropped: no backend for the namespace.", "dropped"),
    counter("kraken_origin_writeback_missing", "Write-back tasks dropped: the cached blob is gone.", "missing"),
    gauge("kraken_origin_writeback_pending", "Write-back tasks waiting now (queue depth).", "pending"),
)
REPAIR = (
    counter("kraken_origin_repair_walks", "Ring repair walks finished.", "walks"),
    gauge("kraken_origin_repair_running", "1 while a repair walk runs.", "running"),
    counter("kraken_origin_repair_checked_blobs", "Blobs the repair walks looked at.", "checked"),
    counter("kraken_origin_repair_copies", "Copies the repair sent (or found held meanwhile).", "copies"),
    counter("kraken_origin_repair_copied_bytes", "Bytes the repair copied.", "copied_bytes"),
    counter("kraken_origin_repair_failures", "Repair copies, or questions to a member, that failed.", "failures"),
    gauge("kraken_origin_repair_outside_blobs", "Blobs held outside their placement, at the last walk.", "outside"),
    gauge("kraken_origin_repair_planned_copies", "Copies planned by the walk under way.", "planned"),
    gauge("kraken_origin_repair_done_copies", "Of the planned copies, those sent or failed.", "done"),
)  # fmt: skip


def register_origin(registry: CollectorRegistry, stats: Callable[[], dict[str, Any]]) -> None:
    """The node's series on ``registry``, read from ``stats()`` (``OriginNode.stats``); a section the
    origin does not have (no cluster, no backends, no repair) gives no series."""
    registry.register(StatsCollector(stats, NODE))
    for section, series in (("cluster", CLUSTER), ("writeback", WRITEBACK), ("repair", REPAIR)):
        registry.register(StatsCollector(lambda section=section: stats().get(section), series))  # type: ignore[misc]


def store_writable(root: str, worker: Worker) -> Check:
    """A readiness check: a small file can be written and removed under the store's ``root``."""

    def probe() -> bool:
        path = os.path.join(root, f".readiness-{uuid.uuid4().hex}")
        with open(path, "wb") as f:
            f.write(b"ok")
        os.unlink(path)
        return True

    async def check() -> bool:
        return bool(await worker.run(probe))

    return check


def found_itself(me: str, members: Callable[[], tuple[str, ...]]) -> Check:
    """A readiness check: the ring's members include this origin (``me``)."""

    async def check() -> bool:
        return me in members()

    return check
