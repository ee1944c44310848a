"""Three origins on the real reactor, each with its own ring, and ClusterClient in front of them.

Each origin is an OriginHTTP app over its own CAStore, listening on loopback,
with an ``OriginRing`` over the three (replica count 2) whose copies go over
real connections. The health checks are not started (nothing is marked
unhealthy): failover alone must carry a client past a stopped origin.
"""

from __future__ import annotations

import io
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.interfaces import IListeningPort
from twisted.python.threadpool import ThreadPool

from kraken.cluster.config import ClusterConfig
from kraken.cluster.ring import Ring
from kraken.core import Digest, PieceLengthRule
from kraken.net import HTTPClientConfig
from kraken.net.server import make_site
from kraken.origin.client import ClusterClient, OriginClient
from kraken.origin.cluster import OriginRing, Repair, ReplicaBackend
from kraken.origin.fetch import BlobFetcher
from kraken.origin.http import OriginHTTP
from kraken.origin.node import OriginNode
from kraken.origin.writeback import WriteBackStats
from kraken.store import CAStore
from kraken.workers import ThreadWorker

NS = "team/app"
# Fast failover in tests: one retry round after 10 ms.
FAST = HTTPClientConfig(retries=1, backoff=0.01, max_backoff=0.01)


class Member:
    def __init__(self, name: str, store: CAStore, port: IListeningPort, ring: OriginRing, conns: list[Any]) -> None:
        self.name = name
        self._conns = conns
        self.store = store
        self.port = port
        self.ring = ring
        self.commits: list[tuple[str, Digest, int]] = []
        self.fetcher: BlobFetcher | None = None
        self.stopped = False

    async def add(self, namespace: str, digest: Digest, delay: float = 0.0) -> None:
        """As the write-back queue: records what it is given, with the replica number ``delay`` stands for."""
        self.commits.append((namespace, digest, int(delay)))

    def stats(self) -> WriteBackStats:
        return WriteBackStats()

    async def stop(self) -> None:
        """Stop as a killed process would: no new connections, and the open ones (the clients' pools) cut."""
        if not self.stopped:
            self.stopped = True
            await self.port.stopListening()
            for protocol in self._conns:
                if protocol.transport is not None:
                    protocol.transport.abortConnection()


class Cluster:
    def __init__(self, members: list[Member], worker: ThreadWorker, http: Any, reactor: Any) -> None:
        self.members = members
        self.by_name = {m.name: m for m in members}
        self.worker = worker
        self.http = http
        self.reactor = reactor
        self.ring = Ring([m.name for m in members], 2)

    def client(self, seeds: list[Member] | None = None) -> ClusterClient:
        return ClusterClient(
            http=self.http,
            origins=[f"http://{m.name}" for m in (seeds or self.members)],
            clock=self.reactor,
            config=FAST,
            worker=self.worker,
            rng=random.Random(7),
        )

    def placed(self, digest: Digest) -> list[Member]:
        return [self.by_name[n] for n in self.ring.placement(digest)]

    def spare(self, digest: Digest) -> Member:
        [member] = [m for m in self.members if m.name not in self.ring.placement(digest)]
        return member


@pytest_twisted.async_yield_fixture()
async def cluster(reactor: Any, http: Any, tmp_path: Path) -> AsyncIterator[Cluster]:
    pool = ThreadPool(1, 4, "test-cluster-io")
    pool.start()
    worker = ThreadWorker(reactor, pool)
    ports = []
    sites = []
    conns: list[list[Any]] = []
    for _ in range(3):
        site = make_site(None, reactor=reactor, access_log=False)  # type: ignore[arg-type]  # set below
        site.timeOut = None
        built: list[Any] = []
        build = site.buildProtocol
        site.buildProtocol = lambda addr, build=build, built=built: built.append(p := build(addr)) or p  # type: ignore[method-assign]
        conns.append(built)
        sites.append(site)
        ports.append(reactor.listenTCP(0, site, interface="127.0.0.1"))
    names = [f"127.0.0.1:{p.getHost().port}" for p in ports]
    config = ClusterConfig(hosts=tuple(names), replicas=2)
    members = []
    for i, (name, port, site) in enumerate(zip(names, ports, sites, strict=True)):
        store = CAStore(
            str(tmp_path / f"origin-{i}"), worker=worker, piece_rule=PieceLengthRule(((0, 1024),)), now=reactor.seconds
        )
        once = HTTPClientConfig(retries=0)

        def client_for(member: str, once: HTTPClientConfig = once) -> OriginClient:
            return OriginClient(http=http, base=f"http://{member}", clock=reactor, config=once, worker=worker)

        ring = OriginRing(config, me=name, clock=reactor, client_for=client_for, blob_path=store.blob_path)
        member = Member(name, store, port, ring, conns[i])

        fetcher = BlobFetcher(
            store, Repair(ReplicaBackend(ring, worker=worker, clock=reactor, timeout=10.0), None), worker=worker,
            clock=reactor,
        )  # fmt: skip
        member.fetcher = fetcher
        # A replica k's write-back waits k seconds: the member records k.
        node = OriginNode(store, advertise=name, fetcher=fetcher, placement=ring, writeback=member, replica_delay=1.0)
        app = OriginHTTP(node)
        site.resource = app.resource()
        members.append(member)
    try:
        yield Cluster(members, worker, http, reactor)
    finally:
        for m in members:
            if m.fetcher is not None:
                await m.fetcher.stopService()
            await m.stop()
        pool.stop()


def blob(tmp_path: Path, size: int = 5000, seed: int = 0) -> tuple[str, Digest, bytes]:
    data = random.Random(seed).randbytes(size)
    path = tmp_path / f"blob-{seed}"
    path.write_bytes(data)
    return str(path), Digest.from_bytes(data), data


@pytest_twisted.ensureDeferred
async def test_every_origin_answers_the_same_locations(cluster: Cluster) -> None:
    digest = Digest.from_bytes(b"where does it live")
    expected = tuple(f"http://{n}" for n in cluster.ring.placement(digest))
    for m in cluster.members:
        assert await cluster.client([m]).locations(digest) == expected


@pytest_twisted.ensureDeferred
async def test_an_upload_lands_on_both_replicas_and_not_the_spare(cluster: Cluster, tmp_path: Path) -> None:
    path, digest, data = blob(tmp_path)
    client = cluster.client()
    await client.upload(NS, digest, path, len(data))

    first, second = cluster.placed(digest)
    assert await first.store.stat(digest) == len(data)
    assert await second.store.stat(digest) == len(data)  # copied before the commit answered
    assert await cluster.spare(digest).store.stat(digest) is None
    # The first took the client's upload; the second got the copy as replica 1, and did not copy it on.
    assert first.commits == [(NS, digest, 0)]
    assert second.commits == [(NS, digest, 1)]
    assert first.ring.stats().replicated == 1 and second.ring.stats().replicated == 0
    assert await client.read_small(NS, digest, 1 << 20) == data

    # Uploading again: the first answers "exists" (write-back re-ensured), and copies nothing again.
    await client.upload(NS, digest, path, len(data))
    assert first.commits == [(NS, digest, 0), (NS, digest, 0)]
    assert first.ring.stats().replicated == 1


@pytest_twisted.ensureDeferred
async def test_reads_fail_over_past_a_stopped_origin(cluster: Cluster, tmp_path: Path) -> None:
    path, digest, data = blob(tmp_path, seed=1)
    await cluster.client().upload(NS, digest, path, len(data))
    first, _second = cluster.placed(digest)
    await first.stop()

    client = cluster.client()  # knows all three, one of them dead
    assert await client.stat(NS, digest) == len(data)
    assert await client.read_small(NS, digest, 1 << 20) == data
    response = await client.get(NS, digest, headers={b"range": [b"bytes=10-19"]})
    assert response.code == 206
    assert await response.content() == data[10:20]
    assert client.failovers >= 1


@pytest_twisted.ensureDeferred
async def test_an_upload_fails_over_and_the_copy_to_the_dead_origin_is_counted(
    cluster: Cluster, tmp_path: Path
) -> None:
    path, digest, data = blob(tmp_path, seed=2)
    first, second = cluster.placed(digest)
    await first.stop()

    client = cluster.client([second, cluster.spare(digest)])
    await client.upload(NS, digest, path, len(data))

    assert await second.store.stat(digest) == len(data)
    assert second.commits == [(NS, digest, 0)]  # it took the client's upload itself
    assert second.ring.stats().replica_failures == 1  # and could not copy it to the stopped first
    assert client.failovers == 1


async def put_behind_the_rings_back(member: Member, digest: Digest, data: bytes) -> None:
    uid = await member.store.uploads.create()
    await member.store.uploads.append(uid, io.BytesIO(data))
    await member.store.commit(uid, digest)


@pytest_twisted.ensureDeferred
async def test_a_replica_that_missed_a_blob_fetches_it_from_the_other(cluster: Cluster, tmp_path: Path) -> None:
    # Only the second location has the blob (the first was down when it was copied, say).
    _path, digest, data = blob(tmp_path, seed=3)
    first, second = cluster.placed(digest)
    await put_behind_the_rings_back(second, digest, data)

    client = cluster.client([first])
    assert await client.read_small(NS, digest, 1 << 20) == data  # the first answered 202, fetched, then served it
    assert await first.store.stat(digest) == len(data)
    assert client.failovers == 0
    assert await cluster.spare(digest).store.stat(digest) is None  # asked with Kraken-Local: no fetch there


@pytest_twisted.ensureDeferred
async def test_a_blob_nobody_has_is_a_404_everywhere(cluster: Cluster) -> None:
    digest = Digest.from_bytes(b"nobody has this")
    for m in cluster.members:
        assert await cluster.client([m]).stat(NS, digest) is None
    for m in cluster.members:
        assert await m.store.stat(digest) is None
