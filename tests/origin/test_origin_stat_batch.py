"""POST /blobs/stat and ClusterClient.stat_many: which of many blobs a
cluster holds, in a few questions, over real OriginHTTP apps behind StubTreq."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from http_fakes import Hanging
from origin_harness import FixedPlacement, Origin
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from kraken.cluster.ring import Ring
from kraken.core import Digest, PieceLengthRule
from kraken.net import HTTPClientConfig
from kraken.origin.client import MAX_STAT_BATCH, ClusterClient
from kraken.origin.http import OriginHTTP
from kraken.origin.node import OriginNode
from kraken.store import CAStore
from kraken.workers import InlineWorker

CONFIG = HTTPClientConfig(retries=2, backoff=1.0, max_backoff=1.0)
NS = "team/app"
MEMBERS = ["o1.test:15002", "o2.test:15002", "o3.test:15002"]


def digests(n: int, seed: str = "d") -> list[Digest]:
    return [Digest.from_bytes(f"{seed}{i}".encode()) for i in range(n)]


class Cluster:
    """Three origins on one ring (2 replicas), each a real OriginHTTP over
    its own CAStore, reached by URL host through their own StubTreq."""

    def __init__(self, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, *, fetching: bool = False) -> None:
        self.harness = Origin(str(tmp_path / "harness"), monkeypatch)
        self.clock = self.harness.clock
        self.ring = Ring(MEMBERS, replicas=2)
        self.worker = InlineWorker()
        self.apps: dict[str, OriginHTTP] = {}
        self.stores: dict[str, CAStore] = {}
        self.stubs: dict[str, StubTreq] = {}
        for m in MEMBERS:
            store = CAStore(
                str(tmp_path / m), worker=self.worker, piece_rule=PieceLengthRule(((0, 4),)), now=self.clock.seconds
            )
            placement = FixedPlacement(lambda d: self.ring.locations(d, lambda _: True))
            fetcher: Any = _NeverFetches() if fetching else None
            app = OriginHTTP(OriginNode(store, advertise=m, placement=placement, fetcher=fetcher))
            self.apps[m], self.stores[m] = app, store
            self.stubs[m] = self.harness.stub_for(app.resource())
        self.requests: list[tuple[str, str, str]] = []
        self.client = ClusterClient(
            http=self,  # type: ignore[arg-type]
            origins=[f"http://{MEMBERS[0]}"],
            clock=self.clock,
            config=CONFIG,
            worker=self.worker,
        )

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        host = urlsplit(url).netloc
        self.requests.append((method, host, urlsplit(url).path))
        kwargs.pop("timeout", None)
        kwargs.pop("reactor", None)
        return self.stubs[host].request(method, url, **kwargs)

    def break_member(self, member: str) -> None:
        """``member`` answers 404 to everything, as an older origin does to POST /blobs/stat."""
        self.stubs[member] = self.harness.stub_for(Resource())

    def put(self, member: str, data: bytes) -> Digest:
        digest = Digest.from_bytes(data)
        path = self.harness.root + f"-{member}-{digest.hex[:8]}"
        with open(path, "wb") as f:
            f.write(data)
        store = self.stores[member]
        uid = self.harness.run(store.uploads.create())
        with open(path, "rb") as f:
            self.harness.run(store.uploads.append(uid, f, 0, len(data)))
        self.harness.run(store.commit(uid, digest))
        return digest

    def owner(self, digest: Digest) -> str:
        return self.placement(digest)[0]

    def placement(self, digest: Digest) -> list[str]:
        return list(self.ring.locations(digest, lambda _: True))

    def count(self, method: str, path_end: str = "") -> int:
        return sum(1 for m, _, p in self.requests if m == method and p.endswith(path_end))


class _NeverFetches:
    """A fetcher whose backends hold nothing (no blob is fetched)."""

    has_backends = True

    def fetching(self, digest: Digest) -> bool:
        return False

    async def ensure(self, namespace: str, digest: Digest) -> bool:
        from kraken.backends import BlobNotFound

        raise BlobNotFound(namespace, digest.hex)


@pytest.fixture
def cluster(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    return Cluster(tmp_path, monkeypatch)


# -- the route ------------------------------------------------------------------


def post(origin: Origin, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    code, _, raw = origin.request("POST", "/blobs/stat", data=data)
    return code, raw


def test_route_answers_held_sizes_locations_and_may_fetch(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    origin = Origin(str(tmp_path), monkeypatch)
    held = Digest.from_bytes(b"held")
    uid = origin.run(origin.store.uploads.create())
    (tmp_path / "held").write_bytes(b"held")
    with open(tmp_path / "held", "rb") as f:
        origin.run(origin.store.uploads.append(uid, f, 0, 4))
    origin.run(origin.store.commit(uid, held))
    absent = Digest.from_bytes(b"absent")
    code, raw = post(origin, {"digests": [str(held), str(absent), str(held)]})
    assert code == 200
    assert json.loads(raw) == {
        "held": {str(held): 4},
        "locations": {str(absent): ["origin.test:15002"]},
        "may_fetch": False,
    }
    code, _, raw = origin.request("GET", "/stats")
    stats = json.loads(raw)
    assert (stats["stat_batches"], stats["stat_batch_digests"]) == (1, 2)


@pytest.mark.parametrize(
    "body,code,text",
    [
        (b"not json", 400, b'{"digests"'),
        ({"digest": []}, 400, b'{"digests"'),
        ({"digests": [1]}, 400, b"strings"),
        ({"digests": ["sha256:nope"]}, 400, b"invalid digest"),
        ({"digests": [str(d) for d in digests(MAX_STAT_BATCH + 1)]}, 413, b"at most 1000"),
        (b" " * (MAX_STAT_BATCH * 81 + 2048), 413, b"at most 1000"),
    ],
)
def test_route_refuses_bad_or_oversized_questions(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, body: Any, code: int, text: bytes
) -> None:
    origin = Origin(str(tmp_path), monkeypatch)
    got, raw = post(origin, body)
    assert got == code and text in raw


# -- ClusterClient.stat_many ----------------------------------------------------------


def test_ten_thousand_unknown_blobs_take_a_few_questions_and_no_head(cluster: Cluster) -> None:
    wanted = digests(10_000)
    with capturedLogs() as events:
        sizes = cluster.harness.run(cluster.client.stat_many(NS, wanted))
    assert sizes == dict.fromkeys(wanted)
    chunks = 10_000 // MAX_STAT_BATCH
    # each chunk: the seed, then each other member first in some placement (2 here)
    assert cluster.count("POST", "/blobs/stat") == chunks * 3 == cluster.client.batch_stats
    assert cluster.count("HEAD") == 0 and cluster.count("GET") == 0
    assert [e for e in events if e.get("log_failure") is not None] == []


def test_held_blobs_are_found_on_their_owner(cluster: Cluster) -> None:
    blobs = [cluster.put(cluster.owner(d), data) for d, data in ((Digest.from_bytes(x), x) for x in (b"a", b"b", b"c"))]
    gone = digests(3, "gone")
    sizes = cluster.harness.run(cluster.client.stat_many(NS, [*blobs, *gone]))
    assert sizes == {blobs[0]: 1, blobs[1]: 1, blobs[2]: 1, **dict.fromkeys(gone)}
    assert cluster.count("HEAD") == 0


def test_unsure_blobs_fall_back_to_a_bounded_number_of_heads(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = Cluster(tmp_path, monkeypatch, fetching=True)
    wanted = digests(40)
    sizes = cluster.harness.run(cluster.client.stat_many(NS, wanted, concurrency=4))
    assert sizes == dict.fromkeys(wanted)
    assert cluster.count("POST", "/blobs/stat") == 3
    assert cluster.count("HEAD") == 40 == cluster.client.single_stats
    # the batch answer's locations were remembered: no per-blob locations lookup
    assert cluster.count("GET", "/locations") == 0


def test_a_member_without_the_route_is_asked_blob_by_blob(cluster: Cluster) -> None:
    cluster.break_member(MEMBERS[1])
    wanted = digests(30)
    # Every blob the broken member is a replica of is asked about blob by blob: it may be the one holding it.
    behind_broken = [d for d in wanted if MEMBERS[1] in cluster.placement(d)]
    assert behind_broken
    with capturedLogs() as events:
        sizes = cluster.harness.run(cluster.client.stat_many(NS, wanted))
    assert sizes == dict.fromkeys(wanted)
    assert cluster.client.single_stats == len(behind_broken)
    assert [e for e in events if e.get("log_failure") is not None] == []
    assert any("falling back" in e.get("log_format", "") for e in events)


def test_cancelling_stops_every_request_and_retries_none(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    harness = Origin(str(tmp_path), monkeypatch)
    http = Hanging()
    client = ClusterClient(
        http=http,  # type: ignore[arg-type]
        origins=[f"http://{m}" for m in MEMBERS],
        clock=harness.clock,
        config=CONFIG,
        worker=InlineWorker(),
    )
    with capturedLogs() as events:
        d = Deferred.fromCoroutine(client.stat_many(NS, digests(5000)))
        out: list[Any] = []
        d.addBoth(out.append)
        assert len(http.sent) == 1  # one question at a time to the seeds
        d.cancel()
        harness.clock.advance(3600)
    assert isinstance(out[0], Failure) and out[0].check(CancelledError)
    assert len(http.sent) == 1 and http.pending == []  # no retry, no next seed, nothing in flight
    assert harness.clock.getDelayedCalls() == []
    assert [e for e in events if e.get("log_failure") is not None] == []
