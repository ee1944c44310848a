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

from kraken.net.metrics import Check, StatsCollector, table
from kraken.workers import Worker

NODE = table("""
counter kraken_origin_stat_batches        stat_batches        Batched stat questions answered.
counter kraken_origin_stat_batch_digests  stat_batch_digests  Digests the batched stat questions asked about.
counter kraken_origin_blob_heads          blob_heads          Questions about one blob's size (HEAD) answered.
""")
CLUSTER = table("""
gauge   kraken_origin_ring_members            members           Members of the origin ring now.
gauge   kraken_origin_ring_unhealthy_members  unhealthy         Ring members marked unhealthy now.
counter kraken_origin_replicated_blobs        replicated        Copies sent to (or already held by) a replica.
counter kraken_origin_replica_failures        replica_failures  Copies to a replica that failed.
""")
WRITEBACK = table("""
counter kraken_origin_writeback_queued          queued    Write-back tasks added.
counter kraken_origin_writeback_uploaded_blobs  uploaded  Blobs written back to a storage backend.
counter kraken_origin_writeback_existed_blobs   existed   Blobs the backend already had.
counter kraken_origin_writeback_failures        failures  Failed write-back attempts (each retried later).
counter kraken_origin_writeback_dropped         dropped   Write-back tasks dropped: no backend for the namespace.
counter kraken_origin_writeback_missing         missing   Write-back tasks dropped: the cached blob is gone.
gauge   kraken_origin_writeback_pending         pending   Write-back tasks waiting now (queue depth).
""")
REPAIR = table("""
counter kraken_origin_repair_walks           walks         Ring repair walks finished.
gauge   kraken_origin_repair_running         running       1 while a repair walk runs.
counter kraken_origin_repair_checked_blobs   checked       Blobs the repair walks looked at.
counter kraken_origin_repair_copies          copies        Copies the repair sent (or found held meanwhile).
counter kraken_origin_repair_copied_bytes    copied_bytes  Bytes the repair copied.
counter kraken_origin_repair_failures        failures      Repair copies, or questions to a member, that failed.
gauge   kraken_origin_repair_outside_blobs   outside       Blobs held outside their placement, at the last walk.
gauge   kraken_origin_repair_planned_copies  planned       Copies planned by the walk under way.
gauge   kraken_origin_repair_done_copies     done          Of the planned copies, those sent or failed.
""")


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
