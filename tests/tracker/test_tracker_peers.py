"""MemoryPeerStore: refresh, expiry on the clock, bounded memory."""

from __future__ import annotations

import random
from typing import Any

from tracker_fakes import peer, result_of
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from kraken.tracker.peers import IPeerStore, MemoryPeerStore

H1, H2 = "11" * 32, "22" * 32


def store(ttl: float = 30.0, **kwargs: Any) -> tuple[MemoryPeerStore, Clock]:
    clock = Clock()
    return MemoryPeerStore(ttl, clock, rng=random.Random(1), **kwargs), clock


def test_provides_the_interface() -> None:
    s, _ = store()
    assert verifyObject(IPeerStore, s)


def test_update_then_peers() -> None:
    s, _ = store()
    result_of(s.update(H1, peer(1), 0.0))
    result_of(s.update(H1, peer(2, complete=True), 1.0))
    result_of(s.update(H2, peer(3), 1.0))
    assert set(result_of(s.peers(H1, 10, 2.0))) == {peer(1), peer(2, complete=True)}
    assert result_of(s.peers(H2, 10, 2.0)) == [peer(3)]
    assert result_of(s.peers("33" * 32, 10, 2.0)) == []


def test_an_announce_replaces_the_entry() -> None:
    s, _ = store()
    s.record(H1, peer(1), 0.0)
    s.record(H1, peer(1, complete=True), 5.0)
    assert s.live(H1, 10, 6.0) == [peer(1, complete=True)]
    assert len(s) == 1


def test_peers_not_seen_for_ttl_are_gone() -> None:
    s, _ = store(ttl=30.0)
    s.record(H1, peer(1), 0.0)
    s.record(H1, peer(2), 10.0)
    assert len(s.live(H1, 10, 30.0)) == 2  # exactly ttl old: still live
    assert s.live(H1, 10, 30.5) == [peer(2)]
    assert len(s) == 1  # dropped, not just hidden
    s.record(H1, peer(2), 35.0)  # refreshed
    assert s.live(H1, 10, 60.0) == [peer(2)]
    assert s.live(H1, 10, 65.1) == []
    assert len(s) == 0


def test_sweep_runs_on_the_clock_and_stops_cleanly() -> None:
    s, clock = store(ttl=30.0)
    assert s.step == 15.0
    s.startService()
    try:
        s.record(H1, peer(1), 0.0)
        s.record(H2, peer(2), 20.0)
        clock.advance(15.0)  # first sweep: nothing stale yet
        assert len(s) == 2
        clock.advance(15.0)  # t=30: peer 1 exactly ttl old
        assert len(s) == 2
        clock.advance(15.0)  # t=45: peer 1 gone, nobody asked for H1
        assert len(s) == 1
        clock.advance(15.0)  # t=60: peer 2 gone too
        assert len(s) == 0
    finally:
        stopped: list[Any] = []
        d = s.stopService()
        if d is not None:
            d.addBoth(stopped.append)
    assert [c for c in clock.getDelayedCalls() if c.active()] == []


def test_a_failing_sweep_is_logged_and_the_timer_keeps_going() -> None:
    s, clock = store(ttl=2.0)
    calls: list[float] = []

    def broken(now: float) -> int:
        calls.append(now)
        raise RuntimeError("boom")

    s.expire = broken  # type: ignore[method-assign]
    from twisted.logger import capturedLogs

    s.startService()
    try:
        with capturedLogs() as events:
            clock.advance(1.0)
            clock.advance(1.0)
        assert calls == [1.0, 2.0]
        assert any("sweep failed" in e.get("log_format", "") for e in events)
    finally:
        s.stopService()
    assert [c for c in clock.getDelayedCalls() if c.active()] == []


def test_peers_per_blob_are_capped_oldest_first() -> None:
    s, _ = store(max_peers=3)
    for n in range(5):
        s.record(H1, peer(n), float(n))
    s.record(H1, peer(2), 10.0)  # refreshed: now the newest
    s.record(H1, peer(9), 11.0)
    assert {p.peer_id for p in s.live(H1, 10, 11.0)} == {peer(n).peer_id for n in (4, 2, 9)}


def test_blobs_are_capped_least_recently_announced_first() -> None:
    s, _ = store(max_blobs=2)
    hashes = [f"{n:064x}" for n in range(3)]
    s.record(hashes[0], peer(0), 0.0)
    s.record(hashes[1], peer(1), 1.0)
    s.record(hashes[0], peer(2), 2.0)  # hashes[0] is now the most recent
    s.record(hashes[2], peer(3), 3.0)
    assert s.live(hashes[1], 10, 3.0) == []
    assert len(s.live(hashes[0], 10, 3.0)) == 2
    assert s.live(hashes[2], 10, 3.0) == [peer(3)]


def test_limit_prefers_seeders() -> None:
    s, _ = store()
    for n in range(10):
        s.record(H1, peer(n, complete=n % 3 == 0), 0.0)  # 0, 3, 6, 9 complete
    got = s.live(H1, 5, 1.0)
    assert len(got) == 5
    assert [p.complete for p in got] == [True] * 4 + [False]
    assert s.live(H1, 0, 1.0) == []
