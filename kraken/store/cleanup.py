"""Evicting idle blobs from the cache (never from a backend).

A blob is idle when its last access (``cache/ab/cd/<hex>/access``, written by
``CAStore.touch`` and at commit; else the data file's mtime) is older than
the TTI. When the store's filesystem is at least ``aggressive_threshold``
percent full, the shorter ``aggressive_tti`` applies instead.

All disk work (the walk, ``statvfs``, the deletes) runs in the worker; only
``keep`` (e.g. ``WriteBackQueue.pending``: a blob waiting for write-back is
never evicted) runs on the calling (reactor) thread. A blob directory is
deleted by renaming it into ``tmp/`` first, in one atomic rename, then
removing it there: a reader finds either the complete blob or nothing, and a
crash part-way leaves only ``tmp/`` debris, which ``CAStore`` clears at startup.

``collect_partials`` (run once at an agent's start) deletes the partial
downloads (``downloads/<hex>/``) a crashed agent left that cannot be resumed
(no valid metainfo, piece status or data file) or that nobody wrote to for
longer than the TTI; a fresh, resumable one is kept: ``DownloadArea.open``
resumes it with the pieces it has.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable

import attrs
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kraken.core import Bitfield, Digest, MetaInfo
from kraken.core.digest import DigestError
from kraken.workers import Worker

log = Logger(namespace="kraken.store.cleanup")


def disk_usage_percent(path: str) -> float:
    """How full the filesystem holding ``path`` is, in percent, as ``df``
    counts it (space reserved for root counts as unavailable). Blocking."""
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    available = st.f_bavail * st.f_frsize
    total = used + available
    return 0.0 if total <= 0 else 100.0 * used / total


@attrs.frozen
class Eviction:
    """What one sweep did."""

    evicted: list[Digest]
    kept: list[Digest]  # idle, but ``keep`` was true for them (waiting for write-back)
    tti: float  # the TTI that applied
    usage: float | None  # disk usage in percent (None when no aggressive mode is configured)
    aggressive: bool = False  # the usage reached the threshold: aggressive_tti applied


async def evict_idle(
    root: str,
    *,
    now: float,
    tti: float,
    keep: Callable[[Digest], bool],
    worker: Worker,
    aggressive_threshold: float | None = None,
    aggressive_tti: float | None = None,
    usage: Callable[[str], float] = disk_usage_percent,
) -> Eviction:
    """Evict the blobs under ``root``/cache idle since before ``now - tti``.

    ``usage(root)`` (run in the worker) gives the disk usage in percent; at
    or above ``aggressive_threshold`` the TTI is ``aggressive_tti`` (when it
    is shorter). Digests for which ``keep`` is true are left alone.
    """
    cache = os.path.join(root, "cache")
    tmp = os.path.join(root, "tmp")
    percent: float | None = None
    aggressive = False
    if aggressive_threshold is not None and aggressive_tti is not None:
        percent = await worker.run(usage, root)
        if percent >= aggressive_threshold and aggressive_tti < tti:
            tti, aggressive = aggressive_tti, True
    cutoff = now - tti
    idle = await worker.run(_idle_blobs, cache, cutoff)
    kept = [d for d in idle if keep(d)]
    kept_set = set(kept)
    doomed = [d for d in idle if d not in kept_set]
    evicted = await worker.run(_evict, cache, tmp, doomed, cutoff) if doomed else []
    return Eviction(evicted=evicted, kept=kept, tti=tti, usage=percent, aggressive=aggressive)


def _blob_dir(cache: str, digest: Digest) -> str:
    return os.path.join(cache, *digest.shard, digest.hex)


def last_access(blob_dir: str) -> float | None:
    """The blob's last access: its ``access`` file, else its data's mtime,
    else None (the directory is gone). Blocking."""
    try:
        with open(os.path.join(blob_dir, "access")) as f:
            return float(f.read().strip())
    except (FileNotFoundError, ValueError):
        pass
    try:
        return os.stat(os.path.join(blob_dir, "data")).st_mtime
    except FileNotFoundError:
        return None


def _idle_blobs(cache: str, cutoff: float) -> list[Digest]:
    """The blobs last read before ``cutoff``: sha256 ones at ``cache/ab/cd/<hex>``, sha512 ones at
    ``cache/sha512/ab/cd/<hex>`` (walked as a cache of its own; seen from ``cache`` it holds nothing)."""
    return _idle_under(cache, cutoff) + _idle_under(os.path.join(cache, "sha512"), cutoff)


def _idle_under(cache: str, cutoff: float) -> list[Digest]:
    idle = []
    for a in _subdirs(cache):
        for b in _subdirs(a):
            for blob in _subdirs(b):
                try:
                    digest = Digest(os.path.basename(blob))
                except DigestError:
                    continue  # not ours
                seen = last_access(blob)
                if seen is not None and seen < cutoff:
                    idle.append(digest)
    return idle


def _subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return sorted(e.path for e in it if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def _evict(cache: str, tmp: str, digests: list[Digest], cutoff: float) -> list[Digest]:
    os.makedirs(tmp, exist_ok=True)
    evicted = []
    for digest in digests:
        blob = _blob_dir(cache, digest)
        seen = last_access(blob)
        if seen is None or seen >= cutoff:
            continue  # gone, or read since the walk
        doomed = os.path.join(tmp, f"evict-{uuid.uuid4().hex}")
        try:
            os.rename(blob, doomed)  # atomic: readers see the whole blob or nothing
        except FileNotFoundError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        evicted.append(digest)
    return evicted


def collect_partials(root: str, *, now: float, tti: float) -> list[str]:
    """Delete the partial downloads under ``root``/downloads that cannot be
    resumed or were last written before ``now - tti``; returns the names
    deleted. Blocking; for startup only (before any download opens one)."""
    downloads = os.path.join(root, "downloads")
    collected = []
    for entry in _subdirs(downloads):
        if not _resumable(entry, now - tti):
            shutil.rmtree(entry, ignore_errors=True)
            collected.append(os.path.basename(entry))
    return collected


def _resumable(directory: str, cutoff: float) -> bool:
    try:
        Digest(os.path.basename(directory))
        status = os.path.join(directory, "pieces")
        if os.stat(status).st_mtime < cutoff:
            return False
        with open(os.path.join(directory, "metainfo"), "rb") as f:
            info = MetaInfo.from_json(f.read())
        with open(status, "rb") as f:
            Bitfield.from_bytes(info.num_pieces, f.read())
        return info.digest.hex == os.path.basename(directory) and (
            os.path.getsize(os.path.join(directory, "data")) == info.length
        )
    except (OSError, ValueError):  # MetaInfoError and DigestError are ValueErrors
        return False


COUNTERS = ("sweeps", "sweep_failures", "aggressive_sweeps", "blobs_evicted", "blobs_kept", "partials_collected")


class CacheCleanup(TimerService):
    """Runs ``evict_idle`` every ``interval`` seconds on ``clock``.

    Failures are logged, never raised, so the timer keeps running. The first
    sweep runs one interval after startup, so starting a daemon does no disk
    work. ``on_evicted(digests)`` (on the reactor thread) hears of each
    sweep's evictions; ``counts`` (``COUNTERS``) count since start.
    """

    log = Logger()

    def __init__(
        self,
        root: str,
        *,
        worker: Worker,
        clock: IReactorTime,
        keep: Callable[[Digest], bool],
        interval: float,
        tti: float,
        aggressive_threshold: float | None = None,
        aggressive_tti: float | None = None,
        usage: Callable[[str], float] = disk_usage_percent,
        on_evicted: Callable[[list[Digest]], object] | None = None,
        kept_why: str = "for write-back",
    ) -> None:
        super().__init__(interval, self._tick)
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._on_evicted = on_evicted
        self._kept_why = kept_why  # what ``keep`` stands for, in the log line
        self.clock = clock
        self._clock = clock  # TimerService.clock is Optional; this one is not
        self.setName("cache-cleanup")
        self._root = root
        self._worker = worker
        self._keep = keep
        self._tti = tti
        self._aggressive_threshold = aggressive_threshold
        self._aggressive_tti = aggressive_tti
        self._usage = usage
        self._started = False

    def _tick(self) -> Deferred[Eviction | None] | None:
        if not self._started:  # TimerService calls once at start: skip that one
            self._started = True
            return None
        return Deferred.fromCoroutine(self.sweep())

    async def sweep(self) -> Eviction | None:
        """One pass; None if it failed (the failure is logged)."""
        try:
            result = await evict_idle(
                self._root,
                now=self._clock.seconds(),
                tti=self._tti,
                keep=self._keep,
                worker=self._worker,
                aggressive_threshold=self._aggressive_threshold,
                aggressive_tti=self._aggressive_tti,
                usage=self._usage,
            )
        except Exception:
            self.counts["sweep_failures"] += 1
            self.log.failure("cache cleanup failed")
            return None
        self._count(result)
        if self._on_evicted is not None and result.evicted:
            self._on_evicted(result.evicted)
        for digest in result.evicted:
            self.log.debug("evicted idle blob {digest}", digest=str(digest))
        if result.evicted or result.kept or result.aggressive:
            self.log.info(
                "cache cleanup evicted {count} idle blobs (tti {tti}s, disk {usage}% used, aggressive {aggressive});"
                " {kept} kept {why}",
                count=len(result.evicted),
                tti=result.tti,
                usage=None if result.usage is None else round(result.usage, 1),
                aggressive=result.aggressive,
                kept=len(result.kept),
                why=self._kept_why,
            )
        return result

    def _count(self, result: Eviction) -> None:
        c = self.counts
        c["sweeps"] += 1
        c["aggressive_sweeps"] += result.aggressive
        c["blobs_evicted"] += len(result.evicted)
        c["blobs_kept"] += len(result.kept)
