"""Fetch on miss through HTTP: OriginHTTP with a fetcher over the filesystem
backend (whose disk takes clock time), and OriginClient polling on 202, all
through StubTreq on the harness's Clock."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import treq
from fetch_fakes import ClockWorker, FakeBackend
from origin_harness import PEER, Origin
from test_origin_single import Scripted, client_for
from twisted.internet.defer import Deferred

from kraken.backends import FSBackend, Router, ShardedDockerBlobPather
from kraken.core import Digest, MetaInfo
from kraken.origin.client import StillFetching
from kraken.origin.fetch import BlobFetcher

NS = "library/ubuntu"
DATA = b"a layer only the backend holds " * 9
DIGEST = Digest.from_bytes(DATA)
DISK = 1.0  # seconds of clock time per backend disk operation


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "registry" / "docker/registry/v2/blobs/sha256" / DIGEST.hex[:2] / DIGEST.hex / "data"
    path.parent.mkdir(parents=True)
    path.write_bytes(DATA)
    return tmp_path / "registry"


@pytest.fixture
def fetcher(origin: Origin, registry: Path) -> BlobFetcher:
    fs = FSBackend(str(registry), ShardedDockerBlobPather(), worker=ClockWorker(origin.clock, DISK))
    f = BlobFetcher(origin.store, Router([("library/.*", fs)]), worker=origin.worker, clock=origin.clock)
    origin.serve(PEER, "origin.test:15002", fetcher=f)
    return f


def request(origin: Origin, method: str, url: str) -> tuple[int, Any, bytes]:
    """One request, the clock advancing in small steps while it runs."""

    async def go() -> tuple[int, Any, bytes]:
        response = await origin.stub.request(method, "http://origin.test" + url)
        return response.code, response.headers, await treq.content(response)

    return origin.run(go(), step=0.125)


def finish(origin: Origin, fetcher: BlobFetcher) -> None:
    origin.run(fetcher.when_idle(DIGEST), step=0.125)


BLOB = f"/namespace/{NS}/blobs/{DIGEST}"


def test_first_get_is_202_then_200_once_fetched(origin: Origin, fetcher: BlobFetcher) -> None:
    code, headers, body = request(origin, "GET", BLOB)
    assert (code, body) == (202, b"")
    assert headers.getRawHeaders(b"retry-after") == [b"1"]
    assert fetcher.fetching(DIGEST)
    assert request(origin, "HEAD", BLOB)[0] == 202
    assert request(origin, "GET", f"{BLOB}/metainfo")[0] == 202
    finish(origin, fetcher)
    code, _, body = request(origin, "GET", BLOB)
    assert (code, body) == (200, DATA)
    code, _, body = request(origin, "GET", f"{BLOB}/metainfo")
    assert code == 200
    info = MetaInfo.from_json(body)
    assert info.digest == DIGEST and info.length == len(DATA)


def test_metainfo_alone_triggers_the_fetch(origin: Origin, fetcher: BlobFetcher) -> None:
    assert request(origin, "GET", f"{BLOB}/metainfo")[0] == 202
    finish(origin, fetcher)
    assert request(origin, "GET", f"{BLOB}/metainfo")[0] == 200


def test_peers_wait_for_the_fetch(origin: Origin, fetcher: BlobFetcher) -> None:
    code, _, body = request(origin, "GET", f"/blobs/{DIGEST}/peers")
    assert (code, json.loads(body)) == (200, {"peers": []})  # no namespace: cannot start a fetch
    assert request(origin, "GET", f"{BLOB}/peers")[0] == 202
    assert request(origin, "GET", f"/blobs/{DIGEST}/peers")[0] == 202  # one runs now
    finish(origin, fetcher)
    for url in (f"{BLOB}/peers", f"/blobs/{DIGEST}/peers"):
        code, _, body = request(origin, "GET", url)
        assert (code, json.loads(body)) == (200, {"peers": [PEER.to_json()]})


def test_a_blob_no_backend_has_is_404(origin: Origin, fetcher: BlobFetcher) -> None:
    unknown = Digest.from_bytes(b"nobody has this")
    assert request(origin, "GET", f"/namespace/{NS}/blobs/{unknown}")[0] == 404
    assert request(origin, "HEAD", f"/namespace/{NS}/blobs/{unknown}")[0] == 404
    assert request(origin, "GET", f"/namespace/{NS}/blobs/{unknown}/metainfo")[0] == 404
    assert request(origin, "GET", f"/namespace/{NS}/blobs/{unknown}/peers")[0] == 404
    # A namespace no backend serves.
    assert request(origin, "GET", f"/namespace/scratch/blobs/{DIGEST}")[0] == 404
    assert not fetcher.fetching(DIGEST)


def test_a_backend_failing_is_503_for_a_while(origin: Origin) -> None:
    backend = FakeBackend()
    backend.blobs[DIGEST.hex] = DATA
    backend.down = True
    f = BlobFetcher(origin.store, Router([(".*", backend)]), worker=origin.worker, clock=origin.clock, retry_ttl=5.0)
    origin.serve(advertise="origin.test:15002", fetcher=f)
    code, headers, _ = origin.request("GET", BLOB)
    assert code == 503 and headers.getRawHeaders(b"retry-after") == [b"1"]
    assert origin.request("GET", BLOB)[0] == 503
    assert backend.stats == 1  # the cached answer
    backend.down = False
    origin.clock.advance(5.0)
    code, _, body = origin.request("GET", BLOB)  # the fake backend answers at once: fetched already
    assert (code, body) == (200, DATA)


def test_without_fetcher_a_missing_blob_is_404(origin: Origin, registry: Path) -> None:
    assert origin.request("GET", BLOB)[0] == 404
    assert origin.request("GET", f"{BLOB}/metainfo")[0] == 404
    code, _, body = origin.request("GET", f"{BLOB}/peers")
    assert (code, json.loads(body)) == (200, {"peers": []})


def test_the_client_polls_until_the_blob_is_fetched(origin: Origin, fetcher: BlobFetcher) -> None:
    client = client_for(origin)
    assert origin.run(client.read_small(NS, DIGEST, 1 << 20), step=0.125) == DATA
    assert origin.run(client.stat(NS, DIGEST)) == len(DATA)
    info = origin.run(client.metainfo(NS, DIGEST))
    assert info is not None and info.digest == DIGEST
    assert origin.run(client.stat(NS, Digest.from_bytes(b"nobody")), step=0.125) is None


def test_the_client_metainfo_and_stat_poll_too(origin: Origin, fetcher: BlobFetcher) -> None:
    client = client_for(origin)
    info = origin.run(client.metainfo(NS, DIGEST), step=0.125)
    assert info is not None and info.length == len(DATA)
    response = origin.run(client.get(NS, DIGEST))
    assert response.code == 200
    assert origin.run(treq.content(response)) == DATA


def held(origin: Origin) -> None:
    """Put the blob in the origin's store (a push)."""

    async def push() -> None:
        uid = await origin.store.uploads.create()
        await origin.store.uploads.append(uid, io.BytesIO(DATA))
        await origin.store.commit(uid, DIGEST)

    origin.run(push())


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_the_client_backs_off_on_202(origin: Origin, method: bytes) -> None:
    held(origin)
    scripted = Scripted(origin.http.resource(), [(method, 202), (method, 202)])
    client = client_for(origin, origin.stub_for(scripted))
    asked: list[float] = []
    real_render = scripted.render

    def render(request: Any) -> Any:
        asked.append(origin.clock.seconds())
        return real_render(request)

    scripted.render = render  # type: ignore[method-assign]
    if method == b"GET":
        assert origin.run(client.read_small(NS, DIGEST, 1 << 20), step=0.05) == DATA
    else:
        assert origin.run(client.stat(NS, DIGEST), step=0.05) == len(DATA)
    assert scripted.seen == [method] * 3
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(asked)]
    assert gaps == pytest.approx([1.0, 1.3], abs=0.06)  # the clock advances in 0.05 s steps


def test_the_client_gives_up_after_its_poll_timeout(origin: Origin) -> None:
    scripted = Scripted(origin.http.resource(), [(b"GET", 202)] * 100)
    client = client_for(origin)
    client = type(client)(
        http=origin.stub_for(scripted),
        base="http://origin.test/",
        clock=origin.clock,
        config=client._config,
        worker=client._worker,
        poll_timeout=10.0,
    )
    work = Deferred.fromCoroutine(client.metainfo(NS, DIGEST))
    with pytest.raises(StillFetching):
        origin.run(work, step=0.5)
    assert origin.clock.seconds() <= 10.0
    assert 4 <= len(scripted.seen) <= 8  # 1, 1.3, 1.69, 2.2, 2.86: about 6 asks in 10 s


@pytest.mark.parametrize(("hold", "heard"), [(0.0, 7.25), (2.0, 6.0)])
def test_with_a_hold_the_client_hears_of_the_blob_as_it_lands(
    origin: Origin, registry: Path, hold: float, heard: float
) -> None:
    """The backend's stat and download take 3 s each, so the blob lands at 6 s. Without a hold the client hears
    of it at its next poll (asked at 3 s after the stat, then 1, 1.3 and 1.69 s later, on a clock stepping by
    0.125 s: at 7.25 s); with
    a hold each question waits for the fetch (until 5 s, then, asked again at once, until it lands)."""
    fs = FSBackend(str(registry), ShardedDockerBlobPather(), worker=ClockWorker(origin.clock, 3.0))
    f = BlobFetcher(origin.store, Router([("library/.*", fs)]), worker=origin.worker, clock=origin.clock, hold=hold)
    origin.serve(PEER, "origin.test:15002", fetcher=f)
    info = origin.run(client_for(origin).metainfo(NS, DIGEST), step=0.125)
    assert info is not None and info.digest == DIGEST
    assert origin.clock.seconds() == pytest.approx(heard, abs=0.2)
