"""The agent's cache cleanup with its real scheduler and store (tests/p2p/swarm.py, one Clock): idle blobs
evicted by TTI, aggressive above the disk watermark, never a blob being downloaded, seeded or read; partial
downloads of a crashed agent collected at start."""

from __future__ import annotations

import os
from typing import Any

from swarm import Node, Swarm, blob, done, read, resolved, seed_store
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs

from kraken.agent.cleanup import Pins, agent_cleanup
from kraken.core import Digest
from kraken.store import CacheCleanup
from kraken.store.config import CleanupConfig
from kraken.workers import InlineWorker

HOUR = 3600.0
CONFIG = CleanupConfig(enabled=True, interval=HOUR, tti=6 * HOUR, aggressive_threshold=80, aggressive_tti=HOUR)


def cleanup_of(swarm: Swarm, node: Node, pins: Pins | None = None, usage: Any = lambda root: 10.0) -> CacheCleanup:
    return agent_cleanup(
        CONFIG,
        str(swarm.root / node.name),
        scheduler=node.scheduler,
        pins=pins or Pins(),
        worker=InlineWorker(),
        clock=swarm.clock,
        usage=usage,
    )


def cached(node: Node, digest: Digest) -> bool:
    return os.path.exists(node.store.blob_path(digest))


def pulled(swarm: Swarm, seeder_tti: float = 300.0) -> tuple[Node, Digest, bytes]:
    data, info = blob(8)
    swarm.origin("origin", (data, info))
    agent = swarm.agent("agent", seeder_tti=seeder_tti)
    d = agent.download(info.digest)
    swarm.run(lambda: done(d))
    assert read(resolved(d)) == data
    return agent, info.digest, data


def sweep(cleanup: CacheCleanup) -> Any:
    return resolved(Deferred.fromCoroutine(cleanup.sweep()))


def test_idle_blob_evicted_after_its_tti_and_pulled_again(swarm: Swarm) -> None:
    agent, digest, data = pulled(swarm)
    cleanup = cleanup_of(swarm, agent)
    swarm.clock.advance(5 * HOUR)  # the seeder torrent expired long ago (seeder_tti 5 min)
    assert not agent.scheduler.holds(digest)
    assert sweep(cleanup).evicted == []
    swarm.clock.advance(2 * HOUR)
    with capturedLogs() as events:
        result = sweep(cleanup)
    assert result.evicted == [digest] and not cached(agent, digest)
    assert any("evicted 1 idle blobs" in (e.get("log_format") or "").replace("{count}", "1") for e in events)
    assert cleanup.counts == {
        "sweeps": 2, "sweep_failures": 0, "aggressive_sweeps": 0, "blobs_evicted": 1, "blobs_kept": 0,
        "partials_collected": 0,
    }  # fmt: skip
    again = agent.download(digest)
    swarm.run(lambda: done(again))
    assert read(resolved(again)) == data


def test_aggressive_above_the_watermark(swarm: Swarm) -> None:
    agent, digest, _ = pulled(swarm)
    full = cleanup_of(swarm, agent, usage=lambda root: 85.0)
    calm = cleanup_of(swarm, agent, usage=lambda root: 79.0)
    swarm.clock.advance(2 * HOUR)
    assert sweep(calm).evicted == []
    result = sweep(full)
    assert (result.evicted, result.aggressive, result.tti) == ([digest], True, HOUR)
    assert full.counts["aggressive_sweeps"] == 1 and not cached(agent, digest)


def test_a_seeded_blob_is_kept_until_its_torrent_is_dropped(swarm: Swarm) -> None:
    agent, digest, _ = pulled(swarm, seeder_tti=8 * HOUR)
    cleanup = cleanup_of(swarm, agent)
    swarm.clock.advance(7 * HOUR)
    assert agent.scheduler.holds(digest)
    result = sweep(cleanup)
    assert (result.evicted, result.kept) == ([], [digest]) and cached(agent, digest)
    swarm.clock.advance(2 * HOUR)  # past seeder_tti: the torrent is dropped, the blob goes at the next sweep
    assert not agent.scheduler.holds(digest)
    assert sweep(cleanup).evicted == [digest]


def test_a_downloading_blob_is_held(swarm: Swarm) -> None:
    data, info = blob(8)
    swarm.origin("origin", (data, info))
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    assert agent.scheduler.holds(info.digest) and not done(d)  # its torrent opened, no piece moved yet
    swarm.run(lambda: done(d))
    assert agent.scheduler.holds(info.digest)  # now seeding


def test_a_pinned_blob_is_never_evicted(swarm: Swarm) -> None:
    agent, digest, _ = pulled(swarm)
    pins = Pins()
    cleanup = cleanup_of(swarm, agent, pins=pins)
    release = pins.pin(digest)
    swarm.clock.advance(7 * HOUR)
    assert sweep(cleanup).kept == [digest] and cached(agent, digest)
    release()
    release()  # twice is harmless
    assert not pins.held(digest)
    assert sweep(cleanup).evicted == [digest]


def test_a_pin_records_an_access(swarm: Swarm) -> None:
    agent, digest, _ = pulled(swarm)
    pins = Pins(agent.store.touch)
    cleanup = cleanup_of(swarm, agent, pins=pins)
    swarm.clock.advance(5 * HOUR)
    pins.pin(digest)()  # a client read it, and is done
    swarm.clock.advance(5 * HOUR)
    assert sweep(cleanup).evicted == []  # read 5 h ago
    swarm.clock.advance(2 * HOUR)
    assert sweep(cleanup).evicted == [digest]


def test_evicting_drops_a_torrent_opened_meanwhile(swarm: Swarm) -> None:
    agent, digest, _ = pulled(swarm, seeder_tti=8 * HOUR)
    assert agent.scheduler.holds(digest)
    agent.scheduler.forget(digest)  # what the cleanup's on_evicted does for each evicted blob
    assert not agent.scheduler.holds(digest)


def test_partials_of_a_crashed_agent_are_collected_at_start(swarm: Swarm) -> None:
    data, fresh = blob(8, seed=1)
    old, stale = blob(8, seed=2)
    agent = swarm.agent("agent")
    seed_store(agent.store, data, fresh, pieces=[0, 1])  # resumable, written now
    seed_store(agent.store, old, stale, pieces=[0])
    downloads = swarm.root / "agent" / "downloads"
    os.utime(downloads / stale.digest.hex / "pieces", (0, 0))  # last written long ago
    broken = downloads / ("a" * 64)
    broken.mkdir()
    (broken / "data").write_bytes(b"half")  # no metainfo, no piece status
    (downloads / "not-a-digest").mkdir()
    swarm.clock.advance(7 * HOUR)
    os.utime(downloads / fresh.digest.hex / "pieces", (swarm.clock.seconds(),) * 2)
    with capturedLogs() as events:
        cleanup = cleanup_of(swarm, agent)
    assert sorted(os.listdir(downloads)) == [fresh.digest.hex]
    assert cleanup.counts["partials_collected"] == 3
    assert [e["count"] for e in events if "partial downloads" in e.get("log_format", "")] == [3]
