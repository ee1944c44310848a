"""Fetch on miss on the real reactor: threads for the disk, a real HTTP
listener, and OriginClient polling over real connections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.python.threadpool import ThreadPool

from kraken.backends import FSBackend, Router, ShardedDockerBlobPather
from kraken.core import Digest, PieceLengthRule
from kraken.net import HTTPClientConfig
from kraken.net.server import make_site
from kraken.origin.client import OriginClient
from kraken.origin.fetch import BlobFetcher
from kraken.origin.http import OriginHTTP
from kraken.origin.node import OriginNode
from kraken.store import CAStore
from kraken.workers import ThreadWorker

NS = "library/ubuntu"
DATA = b"a layer fetched over real HTTP " * 1000
DIGEST = Digest.from_bytes(DATA)


@pytest_twisted.ensureDeferred
async def test_a_client_gets_a_blob_the_origin_fetches_meanwhile(reactor: Any, http: Any, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    blob = registry / "docker/registry/v2/blobs/sha256" / DIGEST.hex[:2] / DIGEST.hex / "data"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(DATA)

    pool = ThreadPool(1, 2, "test-origin-io")
    pool.start()
    try:
        worker = ThreadWorker(reactor, pool)
        store = CAStore(
            str(tmp_path / "origin"), worker=worker, piece_rule=PieceLengthRule(((0, 4096),)), now=reactor.seconds
        )
        fs = FSBackend(str(registry), ShardedDockerBlobPather(), worker=worker)
        fetcher = BlobFetcher(store, Router([("library/.*", fs)]), worker=worker, clock=reactor)
        app = OriginHTTP(OriginNode(store, advertise="127.0.0.1:15002", fetcher=fetcher))
        site = make_site(app.resource(), reactor=reactor, access_log=False)
        site.timeOut = None  # no idle timers left behind
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        try:
            client = OriginClient(
                http=http,
                base=f"http://127.0.0.1:{port.getHost().port}",
                clock=reactor,
                config=HTTPClientConfig(),
                worker=worker,
            )
            assert await client.read_small(NS, DIGEST, 1 << 20) == DATA
            info = await client.metainfo(NS, DIGEST)
            assert info is not None and info.length == len(DATA) and len(info.piece_sums) == 8
            assert await client.stat(NS, Digest.from_bytes(b"nobody has it")) is None
            await fetcher.when_idle(DIGEST)
        finally:
            await port.stopListening()
    finally:
        pool.stop()
