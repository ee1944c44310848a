"""OriginNode without HTTP: commit -> write-back -> replicate, "already stored", fetch on miss, placement, peers
and stats, over a real CAStore (inline worker) and recording fakes."""

from __future__ import annotations

import io
import os

import attrs
import pytest
from fetch_fakes import FakeBackend
from origin_harness import ADVERTISE, PEER, PIECE, FixedPlacement, Origin
from results import result_of
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs

from kraken.backends import BlobNotFound, Router
from kraken.core import Digest, MetaInfo
from kraken.origin.cluster import ClusterStats
from kraken.origin.fetch import BlobFetcher
from kraken.origin.node import AlreadyStored, NotHeld, OriginNode
from kraken.origin.writeback import WriteBackStats
from kraken.p2p.scheduler import Stats
from kraken.store import DigestMismatch

NS = "library/ubuntu"
DATA = b"a blob for the node " * 4
DIGEST = Digest.from_bytes(DATA)


class Steps:
    """The write-back queue and the ring at once, recording every call in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.replicating: Deferred[None] | None = None

    async def add(self, namespace: str, digest: Digest, delay: float = 0.0) -> None:
        self.calls.append(("writeback", namespace, digest, delay))

    async def replicate(self, namespace: str, digest: Digest, size: int) -> None:
        self.calls.append(("replicate", namespace, digest, size))
        if self.replicating is not None:
            await self.replicating

    def locations(self, digest: Digest) -> list[str]:
        return ["o2:1", "o3:1"]

    def stats(self) -> ClusterStats:
        return ClusterStats(members=3)


@pytest.fixture
def steps() -> Steps:
    return Steps()


@pytest.fixture
def node(origin: Origin, steps: Steps) -> OriginNode:
    return OriginNode(origin.store, advertise=ADVERTISE, placement=steps, writeback=steps, replica_delay=30.0)


def upload(node: OriginNode, data: bytes = DATA, replica: int = 0) -> str:
    digest = Digest.from_bytes(data)
    uid = result_of(node.start_upload(NS, digest, replica))
    assert result_of(node.append(NS, digest, uid, io.BytesIO(data), offset=0, length=len(data))) == len(data)
    return str(uid)


def test_a_commit_is_written_back_then_replicated_before_it_returns(node: OriginNode, steps: Steps) -> None:
    uid = upload(node)
    steps.replicating = Deferred()
    with capturedLogs() as events:
        done = Deferred.fromCoroutine(node.commit(NS, DIGEST, uid))
    assert not done.called, "the commit waits for the copies"
    assert steps.calls == [("writeback", NS, DIGEST, 0.0), ("replicate", NS, DIGEST, len(DATA))]
    steps.replicating.callback(None)
    assert result_of(done).created
    [committed] = [e for e in events if e["log_format"].startswith("blob {digest} committed")]
    assert (committed["digest"], committed["bytes"], committed["created"]) == (str(DIGEST), len(DATA), True)


def test_a_replicas_copy_is_written_back_later_and_not_copied_on(node: OriginNode, steps: Steps) -> None:
    result_of(node.commit(NS, DIGEST, upload(node, replica=2), replica=2))
    assert steps.calls == [("writeback", NS, DIGEST, 60.0)]


def test_already_stored_makes_sure_of_the_write_back(origin: Origin, node: OriginNode, steps: Steps) -> None:
    result_of(node.commit(NS, DIGEST, upload(node)))
    steps.calls.clear()
    with pytest.raises(AlreadyStored, match=f"blob {DIGEST} already exists"):
        result_of(node.start_upload(NS, DIGEST, 1))
    assert steps.calls == [("writeback", NS, DIGEST, 30.0)]


def test_an_upload_made_useless_is_dropped(origin: Origin, node: OriginNode, steps: Steps) -> None:
    late = result_of(node.start_upload(NS, DIGEST))
    result_of(node.commit(NS, DIGEST, upload(node)))
    with pytest.raises(AlreadyStored):
        result_of(node.refuse_if_stored(NS, DIGEST, upload=late))
    assert not os.path.exists(origin.store.uploads.path(late))
    result_of(node.drop_upload(late))  # gone already: quiet


def test_a_wrong_digest_is_refused_and_nothing_follows(node: OriginNode, steps: Steps) -> None:
    uid = upload(node)
    with pytest.raises(DigestMismatch):
        result_of(node.commit(NS, Digest.from_bytes(b"other"), uid))
    assert steps.calls == []


def test_without_a_fetcher_a_missing_blob_is_not_held(node: OriginNode) -> None:
    with pytest.raises(NotHeld, match=f"blob {DIGEST} not found"):
        result_of(node.blob(NS, DIGEST))
    with pytest.raises(NotHeld, match=f"blob {DIGEST} not found"):
        result_of(node.metainfo(NS, DIGEST))
    assert result_of(node.peers(DIGEST, NS)) == []
    assert result_of(node.on_missing(NS, DIGEST)) is False


def test_a_read_touches_and_a_head_is_counted(origin: Origin, node: OriginNode) -> None:
    result_of(node.commit(NS, DIGEST, upload(node)))
    origin.clock.advance(50)
    assert result_of(node.blob(NS, DIGEST, head=True)) == origin.store.blob_path(DIGEST)
    assert node.counters.blob_heads == 1
    access = os.path.join(os.path.dirname(origin.store.blob_path(DIGEST)), "access")
    untouched = open(access).read()
    assert result_of(node.blob(NS, DIGEST)) == origin.store.blob_path(DIGEST)
    assert node.counters.blob_heads == 1
    assert open(access).read() != untouched and float(open(access).read()) == 50.0
    assert result_of(node.metainfo(NS, DIGEST)) == MetaInfo.from_bytes(DATA, PIECE)


def fetching_node(origin: Origin, backend: FakeBackend) -> OriginNode:
    fetcher = BlobFetcher(origin.store, Router([("library/.*", backend)]), worker=origin.worker, clock=origin.clock)
    return OriginNode(origin.store, advertise=ADVERTISE, fetcher=fetcher)


def test_fetch_on_miss_answers_none_while_it_runs(origin: Origin) -> None:
    backend = FakeBackend()
    backend.blobs[DIGEST.hex] = DATA
    backend.gate = Deferred()
    node = fetching_node(origin, backend)
    node.seeds_as(PEER)
    assert result_of(node.peers(DIGEST)) == [], "a question without a namespace starts nothing"
    assert result_of(node.blob(NS, DIGEST)) is None
    assert result_of(node.metainfo(NS, DIGEST)) is None
    assert result_of(node.peers(DIGEST)) is None
    assert result_of(node.on_missing(NS, DIGEST)) is True  # the peer hears BUSY
    with pytest.raises(NotHeld):
        result_of(node.blob(NS, DIGEST, local=True))  # another origin repairing itself: the store alone
    backend.gate.callback(None)
    assert result_of(node.blob(NS, DIGEST)) == origin.store.blob_path(DIGEST)
    assert result_of(node.peers(DIGEST, NS)) == [attrs.evolve(PEER, complete=True, origin=True)]
    assert result_of(node.on_missing(NS, DIGEST)) is False  # here now
    with pytest.raises(BlobNotFound):
        result_of(node.held(NS, Digest.from_bytes(b"nowhere")))


def test_stat_many_answers_held_locations_and_may_fetch(origin: Origin, node: OriginNode) -> None:
    result_of(node.commit(NS, DIGEST, upload(node)))
    other = Digest.from_bytes(b"elsewhere")
    answer = result_of(node.stat_many([DIGEST, other]))
    assert (answer.held, answer.locations, answer.may_fetch) == ({DIGEST: len(DATA)}, {other: ["o2:1", "o3:1"]}, False)
    assert (node.counters.stat_batches, node.counters.stat_batch_digests) == (1, 2)
    assert result_of(fetching_node(origin, FakeBackend()).stat_many([other])).may_fetch is True


def test_locations_without_a_placement_are_this_origin(origin: Origin) -> None:
    assert OriginNode(origin.store, advertise=ADVERTISE).locations(DIGEST) == [ADVERTISE]
    placed = OriginNode(origin.store, advertise=ADVERTISE, placement=FixedPlacement(lambda d: ["a:1"]))
    assert placed.locations(DIGEST) == ["a:1"]


def test_stats_are_the_p2p_counters_the_nodes_then_the_sections(node: OriginNode, steps: Steps) -> None:
    class Queue(Steps):
        def stats(self) -> WriteBackStats:  # type: ignore[override]
            return WriteBackStats(pending=2)

    node = OriginNode(node.store, advertise=ADVERTISE, placement=steps, writeback=Queue())
    node.seeds_as(PEER, lambda: Stats(bytes_out=7))
    stats = node.stats()
    keys = list(stats)
    assert keys.index("bytes_out") < keys.index("stat_batches") < keys.index("blob_heads") < keys.index("cluster")
    assert keys[-2:] == ["cluster", "writeback"]
    assert stats["bytes_out"] == 7
    assert stats["cluster"] == attrs.asdict(ClusterStats(members=3))
    assert stats["writeback"] == attrs.asdict(WriteBackStats(pending=2))
