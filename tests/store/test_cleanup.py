"""Cache cleanup: idle blobs evicted atomically, kept ones honoured, aggressive mode."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from kraken.core import Digest, PieceLengthRule
from kraken.store import CacheCleanup, CAStore, Eviction, disk_usage_percent, evict_idle
from kraken.store.cleanup import last_access
from kraken.workers import InlineWorker

HOUR = 3600.0


def result_of(coro: Any) -> Any:
    out: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(out.append)
    assert out and not isinstance(out[0], Failure), out
    return out[0]


def put(root: Path, payload: bytes, *, accessed: float | None, mtime: float = 0.0) -> Digest:
    """A committed blob as CAStore lays it out, last accessed at ``accessed``
    (None: no access file, so the data's mtime counts)."""
    digest = Digest.from_bytes(payload)
    a, b = digest.shard
    blob = root / "cache" / a / b / digest.hex
    blob.mkdir(parents=True)
    (blob / "data").write_bytes(payload)
    (blob / "metainfo").write_text("{}")
    os.utime(blob / "data", (mtime, mtime))
    if accessed is not None:
        (blob / "access").write_text(f"{accessed:.3f}\n")
    return digest


def present(root: Path, digest: Digest) -> bool:
    a, b = digest.shard
    return (root / "cache" / a / b / digest.hex / "data").exists()


def evict(root: Path, now: float, tti: float = 6 * HOUR, keep: Any = lambda d: False, **kw: Any) -> Eviction:
    return result_of(evict_idle(str(root), now=now, tti=tti, keep=keep, worker=InlineWorker(), **kw))


def test_idle_blobs_are_evicted_recent_ones_kept(tmp_path: Path) -> None:
    now = 100 * HOUR
    idle = put(tmp_path, b"idle", accessed=now - 7 * HOUR)
    recent = put(tmp_path, b"recent", accessed=now - 5 * HOUR)
    result = evict(tmp_path, now)
    assert result.evicted == [idle]
    assert not present(tmp_path, idle)
    assert present(tmp_path, recent)
    assert (result.tti, result.usage, result.aggressive) == (6 * HOUR, None, False)
    assert os.listdir(tmp_path / "tmp") == [], "nothing left behind in tmp/"


def test_data_mtime_counts_without_an_access_file(tmp_path: Path) -> None:
    now = 100 * HOUR
    old = put(tmp_path, b"old", accessed=None, mtime=now - 7 * HOUR)
    new = put(tmp_path, b"new", accessed=None, mtime=now - HOUR)
    assert evict(tmp_path, now).evicted == [old]
    assert present(tmp_path, new)


def test_a_recent_access_file_beats_an_old_mtime(tmp_path: Path) -> None:
    now = 100 * HOUR
    d = put(tmp_path, b"read lately", accessed=now - 60, mtime=0)
    assert evict(tmp_path, now).evicted == []
    assert present(tmp_path, d)


def test_keep_is_honoured(tmp_path: Path) -> None:
    now = 100 * HOUR
    pending = put(tmp_path, b"waiting for write-back", accessed=0)
    other = put(tmp_path, b"written back", accessed=0)
    asked: list[Digest] = []

    def keep(d: Digest) -> bool:
        asked.append(d)
        return d == pending

    result = evict(tmp_path, now, keep=keep)
    assert result.evicted == [other]
    assert result.kept == [pending]
    assert present(tmp_path, pending)
    assert sorted(asked, key=str) == sorted([pending, other], key=str)


def test_touch_by_the_store_keeps_a_blob(tmp_path: Path) -> None:
    now = [0.0]
    store = CAStore(str(tmp_path), worker=InlineWorker(), piece_rule=PieceLengthRule.default(), now=lambda: now[0])
    d = put(tmp_path, b"pulled", accessed=0)
    now[0] = 10 * HOUR
    result_of(store.touch(d))
    assert last_access(os.path.dirname(store.blob_path(d))) == 10 * HOUR
    assert evict(tmp_path, 11 * HOUR).evicted == []
    assert evict(tmp_path, 17 * HOUR).evicted == [d]
    assert result_of(store.stat(d)) is None


def test_aggressive_mode_above_the_threshold(tmp_path: Path) -> None:
    now = 100 * HOUR
    two_hours = put(tmp_path, b"two hours idle", accessed=now - 2 * HOUR)
    fresh = put(tmp_path, b"fresh", accessed=now - 30 * 60)
    seen: list[str] = []

    def usage(path: str) -> float:
        seen.append(path)
        return 79.9

    kw: dict[str, Any] = {"aggressive_threshold": 80, "aggressive_tti": HOUR}
    calm = evict(tmp_path, now, usage=usage, **kw)
    assert (calm.evicted, calm.tti, calm.usage, calm.aggressive) == ([], 6 * HOUR, 79.9, False)
    assert seen == [str(tmp_path)]

    full = evict(tmp_path, now, usage=lambda path: 80.0, **kw)
    assert (full.evicted, full.tti, full.aggressive) == ([two_hours], HOUR, True)
    assert present(tmp_path, fresh)


def test_aggressive_mode_still_honours_keep(tmp_path: Path) -> None:
    now = 100 * HOUR
    pending = put(tmp_path, b"pending", accessed=0)
    result = evict(
        tmp_path, now, keep=lambda d: True, usage=lambda p: 99.0, aggressive_threshold=80, aggressive_tti=HOUR
    )
    assert result.evicted == [] and result.kept == [pending]


def test_real_disk_usage_is_a_percentage(tmp_path: Path) -> None:
    assert 0.0 <= disk_usage_percent(str(tmp_path)) <= 100.0


def test_foreign_entries_are_ignored(tmp_path: Path) -> None:
    junk = tmp_path / "cache" / "ab" / "cd" / "not-a-digest"
    junk.mkdir(parents=True)
    (junk / "data").write_bytes(b"x")
    os.utime(junk / "data", (0, 0))
    (tmp_path / "cache" / "stray-file").write_text("x")
    assert evict(tmp_path, 100 * HOUR).evicted == []
    assert junk.exists()


def test_empty_or_missing_cache(tmp_path: Path) -> None:
    assert evict(tmp_path, 100 * HOUR).evicted == []


def test_a_reader_never_sees_a_half_deleted_blob(tmp_path: Path, monkeypatch: Any) -> None:
    """The blob directory leaves cache/ in one rename: at every step of the
    eviction, a reader finds either the complete blob or nothing."""
    import kraken.store.cleanup as cleanup

    d = put(tmp_path, b"being read", accessed=0)
    a, b = d.shard
    blob = tmp_path / "cache" / a / b / d.hex
    observed: list[tuple[str, object]] = []

    def reader() -> tuple[bool, bool, bool]:
        return ((blob / "data").exists(), (blob / "metainfo").exists(), (blob / "access").exists())

    real_rename, real_rmtree = os.rename, cleanup.shutil.rmtree

    def rename(src: Any, dst: Any) -> None:
        observed.append(("before rename", reader()))
        real_rename(src, dst)
        observed.append(("after rename", reader()))

    def rmtree(path: Any, **kw: Any) -> None:
        observed.append(("before rmtree", reader()))
        real_rmtree(path, **kw)

    monkeypatch.setattr(cleanup.os, "rename", rename)
    monkeypatch.setattr(cleanup.shutil, "rmtree", rmtree)
    # A reader that opened the data before the eviction keeps reading it.
    with open(blob / "data", "rb") as f:
        assert evict(tmp_path, 100 * HOUR).evicted == [d]
        assert f.read() == b"being read"
    complete, gone = (True, True, True), (False, False, False)
    assert observed == [("before rename", complete), ("after rename", gone), ("before rmtree", gone)]


def test_a_blob_read_after_the_walk_is_not_evicted(tmp_path: Path, monkeypatch: Any) -> None:
    import kraken.store.cleanup as cleanup

    now = 100 * HOUR
    d = put(tmp_path, b"read just now", accessed=0)
    a, b = d.shard
    real = cleanup._idle_blobs

    def walk_then_touch(cache: str, cutoff: float) -> list[Digest]:
        found = real(cache, cutoff)
        (tmp_path / "cache" / a / b / d.hex / "access").write_text(f"{now:.3f}\n")
        return found

    monkeypatch.setattr(cleanup, "_idle_blobs", walk_then_touch)
    assert evict(tmp_path, now).evicted == []
    assert present(tmp_path, d)


def started(tmp_path: Path, clock: Clock, **kw: Any) -> CacheCleanup:
    args: dict[str, Any] = {"keep": lambda d: False, "interval": 1800.0, "tti": 6 * HOUR}
    args.update(kw)
    service = CacheCleanup(str(tmp_path), worker=InlineWorker(), clock=clock, **args)
    service.startService()
    return service


def test_cleanup_runs_every_interval_on_the_clock(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(10 * HOUR)
    idle = put(tmp_path, b"idle", accessed=0)
    service = started(tmp_path, clock)
    assert service.name == "cache-cleanup" and service.clock is clock
    assert present(tmp_path, idle), "starting the daemon does no sweep"
    later = put(tmp_path, b"idle later", accessed=10 * HOUR)
    with capturedLogs() as events:
        clock.advance(1800)
    assert not present(tmp_path, idle)
    assert present(tmp_path, later)
    [summary] = [e for e in events if "count" in e]
    assert summary["count"] == 1 and summary["kept"] == 0
    clock.advance(6 * HOUR)
    assert not present(tmp_path, later)
    service.stopService()
    assert not clock.getDelayedCalls()


def test_failures_are_logged_and_the_timer_keeps_running(tmp_path: Path) -> None:
    clock = Clock()
    calls: list[str] = []

    def broken(path: str) -> float:
        calls.append(path)
        raise OSError("statvfs failed")

    service = started(tmp_path, clock, usage=broken, aggressive_threshold=80, aggressive_tti=HOUR)
    with capturedLogs() as events:
        clock.advance(1800)
        clock.advance(1800)
    assert len(calls) == 2
    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 2
    assert failures[0]["log_failure"].check(OSError)
    assert service.running
    service.stopService()
    assert not clock.getDelayedCalls()
