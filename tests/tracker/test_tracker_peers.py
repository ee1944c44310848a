"""MemoryPeerStore: refresh, expiry on the clock, bounded memory."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from tracker_fakes import peer, result_of
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from zope.interface.verify import verifyObject

from kraken.core.peer import PeerInfo
from kraken.tracker.peers import IPeerStore, MemoryPeerStore
from kraken.tracker.unreachable import Reports, UnreachablePolicy

H1, H2 = "11" * 32, "22" * 32
A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"  # announcing addresses


def store(ttl: float = 30.0, **kwargs: Any) -> tuple[MemoryPeerStore, Clock]:
    clock = Clock()
    return MemoryPeerStore(ttl, clock, rng=random.Random(1), **kwargs), clock


def test_provides_the_interface() -> None:
    s, _ = store()
    assert verifyObject(IPeerStore, s)


def test_update_then_peers() -> None:
    s, _ = store()
    result_of(s.update(H1, peer(1), 0.0, A))
    result_of(s.update(H1, peer(2, complete=True), 1.0, A))
    result_of(s.update(H2, peer(3), 1.0, A))
    assert set(result_of(s.peers(H1, 10, 2.0))) == {peer(1), peer(2, complete=True)}
    assert result_of(s.peers(H2, 10, 2.0)) == [peer(3)]
    assert result_of(s.peers("33" * 32, 10, 2.0)) == []


def test_an_announce_replaces_the_entry() -> None:
    s, _ = store()
    s.record(H1, peer(1), 0.0, A)
    s.record(H1, peer(1, complete=True), 5.0, A)
    assert s.live(H1, 10, 6.0) == [peer(1, complete=True)]
    assert len(s) == 1


def test_peers_not_seen_for_ttl_are_gone() -> None:
    s, _ = store(ttl=30.0)
    s.record(H1, peer(1), 0.0, A)
    s.record(H1, peer(2), 10.0, A)
    assert len(s.live(H1, 10, 30.0)) == 2  # exactly ttl old: still live
    assert s.live(H1, 10, 30.5) == [peer(2)]
    assert len(s) == 1  # dropped, not just hidden
    s.record(H1, peer(2), 35.0, A)  # refreshed
    assert s.live(H1, 10, 60.0) == [peer(2)]
    assert s.live(H1, 10, 65.1) == []
    assert len(s) == 0


def test_sweep_runs_on_the_clock_and_stops_cleanly() -> None:
    s, clock = store(ttl=30.0)
    assert s.step == 15.0
    s.startService()
    try:
        s.record(H1, peer(1), 0.0, A)
        s.record(H2, peer(2), 20.0, A)
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
        s.record(H1, peer(n), float(n), A)
    s.record(H1, peer(2), 10.0, A)  # refreshed: now the newest
    s.record(H1, peer(9), 11.0, A)
    assert {p.peer_id for p in s.live(H1, 10, 11.0)} == {peer(n).peer_id for n in (4, 2, 9)}


def test_blobs_are_capped_least_recently_announced_first() -> None:
    s, _ = store(max_blobs=2)
    hashes = [f"{n:064x}" for n in range(3)]
    s.record(hashes[0], peer(0), 0.0, A)
    s.record(hashes[1], peer(1), 1.0, A)
    s.record(hashes[0], peer(2), 2.0, A)  # hashes[0] is now the most recent
    s.record(hashes[2], peer(3), 3.0, A)
    assert s.live(hashes[1], 10, 3.0) == []
    assert len(s.live(hashes[0], 10, 3.0)) == 2
    assert s.live(hashes[2], 10, 3.0) == [peer(3)]


def test_limit_prefers_seeders() -> None:
    s, _ = store()
    for n in range(10):
        s.record(H1, peer(n, complete=n % 3 == 0), 0.0, A)  # 0, 3, 6, 9 complete
    got = s.live(H1, 5, 1.0)
    assert len(got) == 5
    assert [p.complete for p in got] == [True] * 4 + [False]
    assert s.live(H1, 0, 1.0) == []


def test_a_peer_that_completes_or_moves_is_handed_out_as_it_is_now() -> None:
    s, _ = store()
    for n in range(4):
        s.record(H1, peer(n), 0.0, A)
    s.record(H1, peer(1, complete=True), 1.0, A)
    moved = PeerInfo(peer(2).peer_id, "10.9.9.9", 16001)
    s.record(H1, moved, 1.0, A)
    got = s.live(H1, 2, 1.0)
    assert got[0] == peer(1, complete=True), "the new seeder comes first"
    assert set(s.live(H1, 10, 1.0)) == {peer(0), peer(1, complete=True), moved, peer(3)}
    assert len(s) == 4


def test_a_sample_is_uniform_enough() -> None:
    s, _ = store()
    for n in range(20):
        s.record(H1, peer(n), 0.0, A)
    counts: Counter[str] = Counter()
    for _ in range(2000):
        got = s.live(H1, 5, 0.0)
        assert len({p.peer_id for p in got}) == 5
        counts.update(p.peer_id for p in got)
    # Each of 20 peers is picked 500 times on average; 4 sigma is about 80.
    assert len(counts) == 20
    assert all(400 < c < 600 for c in counts.values()), counts


def test_one_address_keeps_at_most_max_per_source_peers_of_a_blob_and_evicts_its_own() -> None:
    s, _ = store(ttl=3600.0, max_peers=100, max_per_source=10)
    honest = [peer(n) for n in range(5)]
    for p in honest:
        s.record(H1, p, 0.0, A)
    with capturedLogs() as events:
        for n in range(60):
            s.record(H1, peer(1000 + n, complete=True), 1.0 + n, B)
    held = {p.peer_id for p in s.live(H1, 100, 61.0)}
    assert {p.peer_id for p in honest} <= held, "the flood evicted only its own"
    assert held - {p.peer_id for p in honest} == {peer(1000 + n).peer_id for n in range(50, 60)}, "its newest"
    assert len(s) == 15
    s.record(H2, peer(1), 61.0, B)  # another blob: a bound of its own
    assert len(s.live(H2, 10, 61.0)) == 1
    [event] = [e for e in events if "the most one address may" in e["log_format"]]
    assert (event["source"], event["count"], event["infohash"]) == (B, 11, H1), "logged once per address and blob"
    # A refresh keeps a peer among its address's newest.
    s.record(H1, peer(1050, complete=True), 62.0, B)
    s.record(H1, peer(2000, complete=True), 63.0, B)
    assert peer(1050).peer_id in {p.peer_id for p in s.live(H1, 100, 63.0)}
    assert peer(1051).peer_id not in {p.peer_id for p in s.live(H1, 100, 63.0)}


def test_a_peer_announced_from_another_address_moves_to_that_address() -> None:
    s, _ = store(max_per_source=2)
    s.record(H1, peer(1), 0.0, A)
    s.record(H1, peer(2), 0.0, A)
    s.record(H1, peer(3), 0.0, B)
    s.record(H1, peer(3), 1.0, A)  # A now has three: its oldest goes
    assert {p.peer_id for p in s.live(H1, 10, 1.0)} == {peer(2).peer_id, peer(3).peer_id}
    check_invariants(s)


def test_a_flood_from_one_address_leaves_the_others_their_share() -> None:
    s, _ = store(max_per_source=200)
    for n in range(3):
        s.record(H1, peer(n, complete=True), 0.0, A)
    for n in range(10):
        s.record(H1, peer(10 + n), 0.0, A)
    for n in range(150):
        s.record(H1, peer(1000 + n, complete=True), 0.0, B)
    for _ in range(50):
        got = s.live(H1, 51, 1.0)
        ours = [p for p in got if int(p.peer_id, 16) < 1000]
        assert len(got) == 51 and len(ours) == 13, "every honest peer, completed and downloading"
        assert sum(int(p.peer_id, 16) < 1000 for p in got[:26]) == 13, "in the first rounds"


def test_a_reported_peer_is_hidden_then_handed_out_again() -> None:
    s, _ = store(ttl=3600.0, policy=UnreachablePolicy(60.0))
    for n in range(4):
        s.record(H1, peer(n), 0.0, A)
    with capturedLogs() as events:
        s.report(H1, [peer(1).peer_id, peer(2).peer_id, peer(99).peer_id], B, 10.0)
    assert {p.peer_id for p in s.live(H1, 10, 10.0)} == {peer(0).peer_id, peer(3).peer_id}
    assert [(e["peer"], e["until"], e["reporters"]) for e in events if "hidden until" in e["log_format"]] == [
        (peer(1).peer_id, 70.0, [B]),
        (peer(2).peer_id, 70.0, [B]),
    ]
    s.record(H1, peer(1), 20.0, A)  # its own announce does not bring it back
    s.record(H1, peer(1, complete=True), 21.0, A)  # nor completing
    assert len(s.live(H1, 10, 69.9)) == 2
    check_invariants(s)
    assert {p.peer_id for p in s.live(H1, 10, 70.0)} == {peer(n).peer_id for n in range(4)}
    assert peer(1, complete=True) in s.live(H1, 10, 70.0)
    check_invariants(s)


def test_reports_from_two_addresses_keep_a_peer_hidden() -> None:
    s, _ = store(ttl=3600.0, policy=UnreachablePolicy(60.0))
    s.record(H1, peer(1), 0.0, A)
    s.record(H1, peer(2), 0.0, A)
    s.report(H1, [peer(1).peer_id], B, 10.0)
    s.report(H1, [peer(1).peer_id], C, 50.0)
    s.report(H1, [peer(1).peer_id], B, 100.0)
    assert s.live(H1, 10, 159.0) == [peer(2)]
    assert len(s.live(H1, 10, 160.0)) == 2


def test_hidden_peers_expire_and_are_evicted_cleanly() -> None:
    s, _ = store(ttl=30.0, max_per_source=2, policy=UnreachablePolicy(600.0))
    s.record(H1, peer(1), 0.0, A)
    s.record(H1, peer(2), 10.0, A)
    s.report(H1, [peer(1).peer_id, peer(2).peer_id], B, 11.0)
    s.record(H1, peer(3), 12.0, A)  # peer 1, hidden, is its address's oldest: evicted
    check_invariants(s)
    assert s.live(H1, 10, 12.0) == [peer(3)]
    assert s.expire(41.0) == 1  # peer 2, hidden, is stale
    check_invariants(s)
    assert s.expire(43.0) == 1
    assert len(s) == 0 and s.live(H1, 10, 43.0) == []
    s.report(H1, [peer(3).peer_id], B, 44.0)  # an unknown blob: nothing happens


# A model of the store: every (blob, peer id) with its latest PeerInfo, its announcing address, when it
# was seen, and its reports (kept with the model's own UnreachablePolicy).
ops = st.lists(
    st.tuples(
        st.sampled_from(["record", "record", "live", "live", "expire", "report"]),
        st.integers(0, 2),  # blob
        st.integers(0, 4),  # peer
        st.booleans(),  # complete
        st.integers(0, 2),  # ip in the announce, and the announcing (or reporting) address
        st.floats(0, 5),  # time step
        st.integers(0, 9),  # limit
    ),
    max_size=60,
)

Model = dict[str, dict[str, tuple[PeerInfo, str, float, Reports | None]]]


@settings(max_examples=400)
@given(ops=ops)
def test_matches_a_model(ops: list[tuple[str, int, int, bool, int, float, int]]) -> None:
    ttl, max_peers, per_source = 6.0, 4, 2
    policy = UnreachablePolicy(3.0)
    s, _ = store(ttl=ttl, max_peers=max_peers, max_per_source=per_source, max_blobs=2, policy=policy)
    model: Model = {}
    now = 0.0
    for op, b, n, complete, address, step, limit in ops:
        now += step
        h = f"{b:064x}"
        source = f"10.1.0.{address}"
        if op == "record":
            p = PeerInfo(peer(n).peer_id, f"10.0.{address}.{n}", 16001, complete=complete)
            s.record(h, p, now, source)
            blob = model.pop(h, {})
            old = blob.pop(p.peer_id, None)
            blob[p.peer_id] = (p, source, now, old[3] if old else None)
            mine = [pid for pid, e in blob.items() if e[1] == source]
            for pid in mine[: max(0, len(mine) - per_source)]:
                del blob[pid]
            while len(blob) > max_peers:
                del blob[next(iter(blob))]
            model[h] = blob
            while len(model) > 2:
                del model[next(iter(model))]
        elif op == "report":
            s.report(h, [peer(n).peer_id, peer(n + 1).peer_id], source, now)
            blob = model.get(h, {})
            for pid in (peer(n).peer_id, peer(n + 1).peer_id):
                if pid in blob:
                    p, src, seen, reports = blob[pid]
                    blob[pid] = (p, src, seen, policy.report(reports, source, now))
        elif op == "live":
            got = s.live(h, limit, now)
            alive = {
                pid: e for pid, e in model.get(h, {}).items() if now - e[2] <= ttl and not (e[3] and e[3].hidden(now))
            }
            assert len(got) == min(limit, len(alive))
            assert len({p.peer_id for p in got}) == len(got)
            assert all(alive[p.peer_id][0] == p for p in got)
            check_fair(got, {pid: (e[0], e[1]) for pid, e in alive.items()})
        else:
            s.expire(now)
        for h2, blob in list(model.items()):
            if op in ("live", "expire") and (op == "expire" or h2 == h):
                for pid, e in list(blob.items()):
                    if now - e[2] > ttl:
                        del blob[pid]
                if not blob:
                    del model[h2]
        check_invariants(s)


def check_fair(got: list[PeerInfo], alive: dict[str, tuple[PeerInfo, str]]) -> None:
    """No address has two more peers in ``got`` than another that had more to give, and each address
    gives its seeders before its leechers; with one address, seeders come first."""
    source = {pid: src for pid, (_, src) in alive.items()}
    given = Counter(source[p.peer_id] for p in got)
    held = Counter(source.values())
    for a in held:
        for b in held:
            if given[a] > given[b] + 1:
                assert given[b] == held[b], (a, b, given, held)
    for a in held:
        mine = [p for p in got if source[p.peer_id] == a]
        seeders = sum(p.complete for pid, (p, src) in alive.items() if src == a)
        assert sum(p.complete for p in mine) == min(seeders, len(mine)), "an address gives its seeders first"
    if len(held) == 1:
        assert [p.complete for p in got] == sorted((p.complete for p in got), reverse=True)


def check_invariants(s: MemoryPeerStore) -> None:
    """Every entry sits in its group, and in its group's list of its kind at its slot or among the
    hidden peers; the lists of groups hold exactly the groups with peers to hand out (or seeders)."""
    for swarm in s._blobs.values():
        assert swarm.entries
        assert sum(len(g.entries) for g in swarm.groups.values()) == len(swarm.entries)
        shown = sum(len(g.seeders) + len(g.leechers) for g in swarm.groups.values())
        assert shown + len(swarm.hidden) == len(swarm.entries)
        for pid, entry in swarm.entries.items():
            group = entry.group
            assert swarm.groups[group.key] is group and group.entries[pid] is entry
            if entry.slot < 0:
                assert swarm.hidden[pid] is entry
            else:
                assert pid not in swarm.hidden
                peers = group.seeders if entry.peer.complete else group.leechers
                assert peers[entry.slot] is entry.peer and entry.peer.peer_id == pid
        assert sorted(map(id, swarm.shown)) == sorted(id(g) for g in swarm.groups.values() if g.seeders or g.leechers)
        assert sorted(map(id, swarm.seeding)) == sorted(id(g) for g in swarm.groups.values() if g.seeders)
        assert all(g.shown_slot == i for i, g in enumerate(swarm.shown))
        assert all(g.seed_slot == i for i, g in enumerate(swarm.seeding))
