"""The proxy in front of full origins: each location is tried once (the
next replica may have room; the same one again cannot), the round is not
repeated, and the registry client gets 507 as OCI JSON."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from results import outcome_of
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from kraken.core import Digest
from kraken.net import HTTPClientConfig
from kraken.origin.client import LOCATIONS_HEADER, ClusterClient
from kraken.proxy.source import ProxySource
from kraken.registry.errors import InsufficientStorage
from kraken.registry.http import RegistryAPI
from kraken.store import UploadArea
from kraken.workers import InlineWorker

NS = "team/app"


class FullOrigins(Resource):
    """Two origins on one resource: both locate every blob on both, hold nothing, and are full."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bytes, bytes]] = []
        self.full = True

    def render(self, request: Any) -> bytes:
        host = request.getHeader(b"host")
        self.calls.append((host, request.method))
        if request.path.endswith(b"/locations"):
            request.setHeader(LOCATIONS_HEADER, b"origin-a:1,origin-b:2")
            return b""
        if request.method == b"HEAD":
            request.setResponseCode(404)
            return b""
        if self.full:
            request.setResponseCode(507)
            return b"no space left on device: this origin's store is full; try again once space is freed\n"
        if request.method == b"POST":
            request.setHeader(b"location", b"0123456789abcdef0123456789abcdef")
            return b""
        request.setResponseCode(201 if request.method == b"PUT" else 204)
        return b""

    def uploads(self) -> list[tuple[bytes, bytes]]:
        return [(h, m) for h, m in self.calls if m == b"POST"]


def run(stub: StubTreq, clock: Clock, work: Any) -> Any:
    def pump() -> None:
        clock.advance(0.5)
        stub.flush()

    return outcome_of(work, pump)


def setup(tmp_path: Path) -> tuple[FullOrigins, StubTreq, Clock, ProxySource]:
    origins = FullOrigins()
    stub = StubTreq(origins)
    clock = Clock()
    http = HTTPClient(agent=stub._agent)  # bodies as IBodyProducers, as the real client sends them
    cluster = ClusterClient(
        http=http,
        origins=["http://origin-a:1"],
        clock=clock,
        config=HTTPClientConfig(retries=3, backoff=0.25),
        worker=InlineWorker(),
        rng=random.Random(1),
    )
    source = ProxySource(cluster, None, worker=InlineWorker(), scratch=str(tmp_path))  # type: ignore[arg-type]
    return origins, stub, clock, source


def test_every_location_once_then_insufficient_storage(tmp_path: Path) -> None:
    origins, stub, clock, source = setup(tmp_path)
    path = tmp_path / "blob"
    path.write_bytes(b"layer" * 1000)
    digest = Digest.from_bytes(path.read_bytes())
    out = run(stub, clock, source.commit_blob(NS, digest, str(path), 5000))
    assert isinstance(out, Failure) and out.check(InsufficientStorage)
    assert out.value.status == 507 and out.value.message.startswith("no space left on device")
    assert origins.uploads() == [(b"origin-a:1", b"POST"), (b"origin-b:2", b"POST")], "no location twice"
    assert clock.seconds() == 0.0, "no backoff: no second round was waited for"
    # Space is back: the same push goes through.
    origins.full = False
    assert run(stub, clock, source.commit_blob(NS, digest, str(path), 5000)) is None


def test_the_registry_client_gets_507_json_and_the_proxy_keeps_no_file(tmp_path: Path) -> None:
    origins, stub, clock, source = setup(tmp_path / "scratch")
    (tmp_path / "scratch").mkdir()
    uploads = UploadArea(str(tmp_path / "uploads"), InlineWorker())
    api = RegistryAPI(source, uploads, clock=clock)
    client = StubTreq(api.resource())
    data = b"x" * 200_000
    digest = Digest.from_bytes(data)

    async def push() -> tuple[int, bytes]:
        response = await client.post(f"http://proxy.test/v2/{NS}/blobs/uploads/?digest={digest}", data=data)
        return response.code, await response.content()

    def pump() -> None:
        clock.advance(0.5)
        stub.flush()
        client.flush()

    code, body = outcome_of(push(), pump)
    assert code == 507
    [error] = json.loads(body)["errors"]
    assert error["code"] == "UNKNOWN" and error["message"].startswith("no space left on device")
    assert error["detail"] == {"digest": str(digest), "reason": "ENOSPC"}
    assert list((tmp_path / "uploads").iterdir()) == []
    assert list((tmp_path / "scratch").iterdir()) == []
    assert len(origins.uploads()) == 2
