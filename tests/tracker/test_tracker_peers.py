"""MemoryPeerStore: refresh, expiry on the clock, bounded memory."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from tracker_fakes import peer, result_of
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from kraken.core.peer import PeerInfo
from kraken.tracker.peers import IPeerStore, MemoryPeerStore, sample

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


def test_a_peer_that_completes_or_moves_is_handed_out_as_it_is_now() -> None:
    s, _ = store()
    for n in range(4):
        s.record(H1, peer(n), 0.0)
    s.record(H1, peer(1, complete=True), 1.0)
    moved = PeerInfo(peer(2).peer_id, "10.9.9.9", 16001)
    s.record(H1, moved, 1.0)
    got = s.live(H1, 2, 1.0)
    assert got[0] == peer(1, complete=True), "the new seeder comes first"
    assert set(s.live(H1, 10, 1.0)) == {peer(0), peer(1, complete=True), moved, peer(3)}
    assert len(s) == 4


def test_a_sample_is_uniform_enough() -> None:
    s, _ = store()
    for n in range(20):
        s.record(H1, peer(n), 0.0)
    counts: Counter[str] = Counter()
    for _ in range(2000):
        got = s.live(H1, 5, 0.0)
        assert len({p.peer_id for p in got}) == 5
        counts.update(p.peer_id for p in got)
    # Each of 20 peers is picked 500 times on average; 4 sigma is about 80.
    assert len(counts) == 20
    assert all(400 < c < 600 for c in counts.values()), counts


def test_sample() -> None:
    rng = random.Random(5)
    population = [peer(n) for n in range(10)]
    assert sample(population, 10, rng.random) == population
    assert sample(population, 20, rng.random) == population
    assert sample(population, 0, rng.random) == []
    got = sample(population, 4, rng.random)
    assert len(got) == 4 and len(set(got)) == 4 and set(got) <= set(population)
    assert population == [peer(n) for n in range(10)], "the population is left alone"


# A model of the store: every (blob, peer id) with its latest PeerInfo and when it was seen.
ops = st.lists(
    st.tuples(
        st.sampled_from(["record", "live", "expire"]),
        st.integers(0, 2),  # blob
        st.integers(0, 4),  # peer
        st.booleans(),  # complete
        st.integers(0, 1),  # address
        st.floats(0, 5),  # time step
        st.integers(0, 9),  # limit
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(ops=ops)
def test_matches_a_model(ops: list[tuple[str, int, int, bool, int, float, int]]) -> None:
    ttl, max_peers = 6.0, 3
    s, _ = store(ttl=ttl, max_peers=max_peers, max_blobs=2)
    model: dict[str, dict[str, tuple[PeerInfo, float]]] = {}
    now = 0.0
    for op, b, n, complete, address, step, limit in ops:
        now += step
        h = f"{b:064x}"
        if op == "record":
            p = PeerInfo(peer(n).peer_id, f"10.0.{address}.{n}", 16001, complete=complete)
            s.record(h, p, now)
            blob = model.pop(h, {})
            blob.pop(p.peer_id, None)
            blob[p.peer_id] = (p, now)
            while len(blob) > max_peers:
                del blob[next(iter(blob))]
            model[h] = blob
            while len(model) > 2:
                del model[next(iter(model))]
        elif op == "live":
            got = s.live(h, limit, now)
            alive = {pid: p for pid, (p, seen) in model.get(h, {}).items() if now - seen <= ttl}
            assert len(got) == min(limit, len(alive))
            assert len({p.peer_id for p in got}) == len(got)
            assert all(alive.get(p.peer_id) == p for p in got)
            assert [p.complete for p in got] == sorted((p.complete for p in got), reverse=True)
            seeders = sum(p.complete for p in alive.values())
            assert sum(p.complete for p in got) == min(seeders, len(got)), "seeders are preferred"
        else:
            s.expire(now)
        for h2, blob in list(model.items()):
            if op != "record" and (op == "expire" or h2 == h):
                for pid, (_, seen) in list(blob.items()):
                    if now - seen > ttl:
                        del blob[pid]
                if not blob:
                    del model[h2]
        check_invariants(s)


def check_invariants(s: MemoryPeerStore) -> None:
    """Every entry sits in the list of its kind, at its slot, and the lists hold nothing else."""
    for swarm in s._blobs.values():
        assert swarm.entries
        assert len(swarm.seeders) + len(swarm.leechers) == len(swarm.entries)
        for pid, entry in swarm.entries.items():
            group = swarm.seeders if entry.peer.complete else swarm.leechers
            assert group[entry.slot] is entry.peer and entry.peer.peer_id == pid
