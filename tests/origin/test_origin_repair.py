"""RingRepair on a Clock: who sends which copy, the throttle, when a walk runs; the repair config keys."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from kraken import config as kconfig
from kraken.cluster.ring import Ring
from kraken.core import Digest, PieceLengthRule
from kraken.origin.config import OriginConfig, RepairConfig
from kraken.origin.node import AlreadyStored, OriginNode
from kraken.origin.repair import MIB, REPAIR_NAMESPACE, Copy, RingRepair, RingView, list_blobs, plan
from kraken.origin.single import StatAnswer
from kraken.store import CAStore
from kraken.workers import InlineWorker

A, B, C = "a:1", "b:1", "c:1"
D = Digest.from_bytes(b"one")


def result_of(work: Any) -> Any:
    d = work if isinstance(work, Deferred) else Deferred.fromCoroutine(work)
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "did not finish"
    return out[0]


# -- who sends: plan() ---------------------------------------------------------


def test_the_first_holder_in_placement_order_sends_to_each_member_that_lacks_it() -> None:
    assert plan(D, 3, me=A, placement=[A, B, C], held={B: False, C: False}) == [Copy(D, 3, B, 2), Copy(D, 3, C, 3)]
    assert plan(D, 3, me=B, placement=[A, B, C], held={A: False, C: False}) == [Copy(D, 3, A, 1), Copy(D, 3, C, 3)]


def test_a_later_holder_leaves_it_to_the_first() -> None:
    assert plan(D, 3, me=B, placement=[A, B, C], held={A: True, C: False}) == []
    assert plan(D, 3, me=C, placement=[A, B, C], held={A: True, B: False}) == []


def test_a_member_that_did_not_answer_is_neither_holder_nor_target() -> None:
    # A did not answer: B (the first holder it knows of) sends to C, never to A.
    assert plan(D, 3, me=B, placement=[A, B, C], held={A: None, C: False}) == [Copy(D, 3, C, 3)]
    assert plan(D, 3, me=B, placement=[A, B, C], held={C: False}) == [Copy(D, 3, C, 3)]


def test_a_copy_outside_the_placement_is_sent_only_when_the_placement_has_none() -> None:
    assert plan(D, 3, me=C, placement=[A, B], held={A: False, B: False}) == [Copy(D, 3, A, 1), Copy(D, 3, B, 2)]
    assert plan(D, 3, me=C, placement=[A, B], held={A: False, B: True}) == []
    assert plan(D, 3, me=C, placement=[A, B], held={A: None, B: None}) == []


def test_nothing_to_do_when_every_member_holds_it() -> None:
    assert plan(D, 3, me=A, placement=[A, B], held={B: True}) == []


# -- fakes ---------------------------------------------------------------------


class Fleet:
    """Every member's store (what it holds), who is down, and the copies sent."""

    def __init__(self, members: Sequence[str], replicas: int) -> None:
        self.ring = Ring(members, replicas)
        self.held: dict[str, dict[Digest, int]] = {m: {} for m in members}
        self.down: set[str] = set()
        self.copies: list[tuple[str, str, Digest, int, bool]] = []  # member, namespace, digest, replica, repair
        self.waiting: list[Deferred[None]] = []  # uploads held back (``hold``)
        self.hold = False
        self.asked = 0

    def client_for(self, member: str) -> Any:
        return FakeMember(self, member)


def read(path: str) -> Digest:
    return Digest.from_bytes(Path(path).read_bytes())


class FakeMember:
    def __init__(self, fleet: Fleet, member: str) -> None:
        self.fleet = fleet
        self.member = member

    async def stat_batch(self, digests: Sequence[Digest]) -> StatAnswer:
        self.fleet.asked += 1
        if self.member in self.fleet.down:
            raise ConnectionRefusedError(f"{self.member} is down")
        held = self.fleet.held[self.member]
        return StatAnswer({d: held[d] for d in digests if d in held}, {}, False)

    async def upload(
        self, namespace: str, digest: Digest, path: str, size: int, *, replica: int = 0, repair: bool = False
    ) -> None:
        if self.member in self.fleet.down:
            raise ConnectionRefusedError(f"{self.member} is down")
        if self.fleet.hold:
            waiting: Deferred[None] = Deferred()
            self.fleet.waiting.append(waiting)
            await waiting
        assert read(path) == digest
        self.fleet.held[self.member][digest] = size
        self.fleet.copies.append((self.member, namespace, digest, replica, repair))


class Origin:
    """One member: its store (really on disk), and its repair over the fleet."""

    def __init__(self, me: str, fleet: Fleet, root: Path, clock: Clock, config: RepairConfig, **kw: Any) -> None:
        self.me = me
        self.fleet = fleet
        self.store = CAStore(
            str(root), worker=InlineWorker(), piece_rule=PieceLengthRule(((0, MIB),)), now=clock.seconds
        )
        view = RingView(me, lambda d: fleet.ring.placement(d), lambda m: m not in fleet.down, fleet.client_for, **kw)
        self.repair = RingRepair(config, view, store=self.store, root=str(root), worker=InlineWorker(), clock=clock)

    def put(self, data: bytes) -> Digest:
        digest = Digest.from_bytes(data)
        uid = result_of(self.store.uploads.create())
        result_of(self.store.uploads.append(uid, io.BytesIO(data), offset=0, length=len(data)))
        result_of(self.store.commit(uid, digest))
        self.fleet.held[self.me][digest] = len(data)
        return digest


CONFIG = RepairConfig(interval=600.0, grace=60.0, concurrency=2)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def blobs(n: int, size: int = 100) -> list[bytes]:
    return [(b"%05d" % i) * (size // 5) for i in range(n)]


# -- a walk --------------------------------------------------------------------


def test_list_blobs_finds_what_the_store_committed(tmp_path: Path, clock: Clock) -> None:
    fleet = Fleet([A], 1)
    origin = Origin(A, fleet, tmp_path / "a", clock, CONFIG)
    digests = [origin.put(data) for data in blobs(5)]
    (tmp_path / "a" / "cache" / "zz" / "yy" / "not-a-digest").mkdir(parents=True)
    (tmp_path / "a" / "cache" / "zz" / "yy" / "not-a-digest" / "data").write_bytes(b"")
    assert list_blobs(str(tmp_path / "a")) == sorted(digests, key=str)


def test_an_empty_replacement_gets_every_blob_it_should_hold_exactly_once(tmp_path: Path, clock: Clock) -> None:
    """A and B hold every blob (as replicas 2 over A, B and the old C left them); C is new and empty."""
    fleet = Fleet([A, B, C], 2)
    origins = [Origin(m, fleet, tmp_path / m[0], clock, CONFIG) for m in (A, B)]
    digests = []
    for data in blobs(40):
        for origin in origins:
            digest = origin.put(data)
        digests.append(digest)
    for origin in origins:
        origin.repair.startService()
        origin.repair.kick("test")
    for origin in origins:
        origin.repair.stopService()
    ours = [d for d in digests if C in fleet.ring.placement(d)]
    assert ours, "some blobs are placed on C"
    assert sorted((str(d) for _, _, d, _, _ in fleet.copies)) == sorted(str(d) for d in ours), "each sent once"
    for digest in digests:
        for member in fleet.ring.placement(digest):
            assert digest in fleet.held[member]
    stats = [o.repair.stats() for o in origins]
    assert sum(s.copies for s in stats) == len(ours)
    assert sum(s.outside for s in stats) == len(ours)  # a blob placed on C is outside A's or B's placement
    assert all(s.walks == 1 and s.checked == 40 and not s.running and s.failures == 0 for s in stats)


def test_a_member_that_does_not_answer_gets_nothing_and_counts_a_failure(tmp_path: Path, clock: Clock) -> None:
    fleet = Fleet([A, B], 2)
    origin = Origin(A, fleet, tmp_path / "a", clock, CONFIG, namespaces=lambda d: [])
    for data in blobs(3):
        origin.put(data)
    fleet.down.add(B)
    origin.repair.startService()
    origin.repair.kick("test")
    assert fleet.copies == []
    # B is unhealthy: not even asked.
    assert fleet.asked == 0 and origin.repair.stats().failures == 0
    fleet.down.clear()
    origin.repair.kick("again")
    assert len(fleet.copies) == 3
    origin.repair.stopService()


def test_copies_carry_the_pending_write_back_namespaces_else_the_repair_flag(tmp_path: Path, clock: Clock) -> None:
    fleet = Fleet([A, B], 2)
    pending: dict[Digest, list[str]] = {}
    origin = Origin(A, fleet, tmp_path / "a", clock, CONFIG, namespaces=lambda d: pending.get(d, []))
    one, two = (origin.put(data) for data in blobs(2))
    pending[one] = ["team/app", "team/other"]
    origin.repair.startService()
    origin.repair.kick("test")
    k = fleet.ring.placement(one).index(B) + 1
    by_digest = sorted(fleet.copies, key=lambda c: (str(c[2]), c[1]))
    k2 = fleet.ring.placement(two).index(B) + 1
    sent = [(B, "team/app", one, k, False), (B, "team/other", one, k, False), (B, REPAIR_NAMESPACE, two, k2, True)]
    expected = sorted(sent, key=lambda c: (str(c[2]), c[1]))
    assert by_digest == expected
    origin.repair.stopService()


# -- throttle and concurrency --------------------------------------------------


def test_the_rate_spaces_the_copies_out_on_the_clock(tmp_path: Path, clock: Clock) -> None:
    fleet = Fleet([A, B], 2)
    origin = Origin(A, fleet, tmp_path / "a", clock, RepairConfig(rate=MIB, concurrency=3))
    for data in blobs(3, size=MIB):
        origin.put(data)
    origin.repair.startService()
    origin.repair.kick("test")
    assert len(fleet.copies) == 1, "the first MiB is the burst"
    clock.advance(0.99)
    assert len(fleet.copies) == 1
    clock.advance(0.01)
    assert len(fleet.copies) == 2
    clock.advance(1.0)
    assert len(fleet.copies) == 3
    assert origin.repair.stats().copied_bytes == 3 * len(blobs(1, size=MIB)[0])
    origin.repair.stopService()
    assert not clock.getDelayedCalls()


def walk_held_back(tmp_path: Path, clock: Clock, count: int, concurrency: int) -> tuple[Fleet, Origin]:
    """A walk of ``count`` blobs to send to B, started, whose uploads wait for ``fleet.waiting``."""
    fleet = Fleet([A, B], 2)
    origin = Origin(A, fleet, tmp_path / "a", clock, RepairConfig(concurrency=concurrency))
    for data in blobs(count):
        origin.put(data)
    fleet.hold = True
    origin.repair.startService()
    origin.repair.kick("test")
    return fleet, origin


def test_at_most_concurrency_copies_in_flight(tmp_path: Path, clock: Clock) -> None:
    fleet, origin = walk_held_back(tmp_path, clock, 5, concurrency=2)
    assert len(fleet.waiting) == 2 and origin.repair.stats().running
    assert origin.repair.stats().planned == 5
    fleet.waiting.pop(0).callback(None)
    assert len(fleet.waiting) == 2 and len(fleet.copies) == 1
    while fleet.waiting:
        fleet.waiting.pop(0).callback(None)
    assert len(fleet.copies) == 5 and not origin.repair.stats().running
    origin.repair.stopService()


def test_stopping_cancels_the_walk_and_leaves_no_timer(tmp_path: Path, clock: Clock) -> None:
    fleet, origin = walk_held_back(tmp_path, clock, 3, concurrency=1)
    [waiting] = fleet.waiting
    origin.repair.stopService()
    assert waiting.called, "cancelled through the walk"
    assert not clock.getDelayedCalls()
    assert not origin.repair.stats().running


def test_progress_lines_at_most_every_progress_seconds(tmp_path: Path, clock: Clock) -> None:
    fleet = Fleet([A, B], 2)
    origin = Origin(A, fleet, tmp_path / "a", clock, RepairConfig(rate=MIB, concurrency=1, progress=2.0))
    for data in blobs(4, size=MIB):
        origin.put(data)
    origin.repair.startService()
    with capturedLogs() as events:
        origin.repair.kick("test")
        for _ in range(4):
            clock.advance(1.0)
    lines = [e for e in events if e["log_format"].startswith("repair: {done}/{planned}")]
    assert [(e["done"], e["planned"]) for e in lines] == [(3, 4)]
    [summary] = [e for e in events if e["log_format"].startswith("repair: walk done")]
    assert (summary["checked"], summary["copies"], summary["failures"]) == (4, 4, 0)
    origin.repair.stopService()


# -- when a walk runs ----------------------------------------------------------


def walked(origin: Origin) -> int:
    return origin.repair.stats().walks


def test_walks_every_interval_and_after_a_change_of_members(tmp_path: Path, clock: Clock) -> None:
    fleet = Fleet([A, B], 2)
    origin = Origin(A, fleet, tmp_path / "a", clock, CONFIG)
    origin.repair.startService()
    assert walked(origin) == 0, "no walk at start"
    clock.advance(600)
    assert walked(origin) == 1
    clock.advance(300)
    origin.repair.members_changed((A, B, C))
    assert walked(origin) == 2
    clock.advance(599)
    assert walked(origin) == 2, "the interval counts from the last walk"
    clock.advance(1)
    assert walked(origin) == 3
    origin.repair.stopService()
    assert not clock.getDelayedCalls()


def test_a_kick_during_a_walk_runs_one_more_after_it(tmp_path: Path, clock: Clock) -> None:
    fleet = Fleet([A, B], 2)
    origin = Origin(A, fleet, tmp_path / "a", clock, CONFIG)
    origin.put(b"held back")
    fleet.hold = True
    origin.repair.startService()
    origin.repair.kick("first")
    origin.repair.kick("second")
    origin.repair.kick("third")
    fleet.waiting.pop().callback(None)
    assert walked(origin) == 2 and not fleet.waiting
    origin.repair.stopService()


def test_a_member_back_after_the_grace_is_walked_for_but_a_flapping_one_is_not(tmp_path: Path, clock: Clock) -> None:
    fleet = Fleet([A, B], 2)
    origin = Origin(A, fleet, tmp_path / "a", clock, CONFIG)
    origin.repair.startService()
    origin.repair.health_changed(B, False)
    clock.advance(59)
    with capturedLogs() as events:
        origin.repair.health_changed(B, True)
    assert walked(origin) == 0
    assert any("within the grace" in e["log_format"] for e in events)
    origin.repair.health_changed(B, False)
    clock.advance(60)
    origin.repair.health_changed(B, True)
    assert walked(origin) == 1
    origin.repair.health_changed(B, True)  # no news
    assert walked(origin) == 1
    origin.repair.stopService()


def test_no_walk_before_start_or_after_stop(tmp_path: Path, clock: Clock) -> None:
    fleet = Fleet([A, B], 2)
    origin = Origin(A, fleet, tmp_path / "a", clock, CONFIG)
    origin.repair.kick("too early")
    origin.repair.startService()
    origin.repair.stopService()
    origin.repair.members_changed((A,))
    assert walked(origin) == 0 and not clock.getDelayedCalls()


# -- the receiving side: a repair copy is not written back ----------------------


class Queue:
    def __init__(self) -> None:
        self.added: list[tuple[str, Digest, float]] = []

    async def add(self, namespace: str, digest: Digest, delay: float = 0.0) -> None:
        self.added.append((namespace, digest, delay))

    def stats(self) -> Any:
        return RepairConfig()


def test_a_repair_copy_is_not_queued_for_write_back(tmp_path: Path, clock: Clock) -> None:
    store = CAStore(str(tmp_path), worker=InlineWorker(), piece_rule=PieceLengthRule(((0, MIB),)), now=clock.seconds)
    queue = Queue()
    node = OriginNode(store, advertise=A, writeback=queue, replica_delay=10.0)
    data = b"repaired"
    digest = Digest.from_bytes(data)
    uid = result_of(node.start_upload(REPAIR_NAMESPACE, digest, 1, repair=True))
    result_of(node.append(REPAIR_NAMESPACE, digest, uid, io.BytesIO(data), offset=0, length=len(data)))
    result_of(node.commit(REPAIR_NAMESPACE, digest, uid, 1, repair=True))
    result_of(node.refuse_if_stored(REPAIR_NAMESPACE, digest, 1, repair=True)).trap(AlreadyStored)
    assert queue.added == []
    result_of(node.refuse_if_stored("team/app", digest, 2)).trap(AlreadyStored)
    assert queue.added == [("team/app", digest, 20.0)]


# -- config --------------------------------------------------------------------


def build(tmp_path: Path, text: str) -> OriginConfig:
    path = tmp_path / "origin.yaml"
    path.write_text("advertise: 'a:1'\ncluster: {hosts: ['a:1', 'b:1'], replicas: 2}\n" + text)
    return kconfig.build(OriginConfig, kconfig.load(str(path)))


def test_repair_keys(tmp_path: Path) -> None:
    config = build(tmp_path, "repair: {interval: 30m, grace: 0s, concurrency: 4, rate: 50MiB, progress: 5s}")
    assert config.repair == RepairConfig(interval=1800.0, grace=0.0, concurrency=4, rate=50 * MIB, progress=5.0)
    assert build(tmp_path, "").repair == RepairConfig()
    assert build(tmp_path, "repair: {enabled: false}").repair.enabled is False
