"""OriginClient against the real OriginHTTP behind StubTreq."""

from __future__ import annotations

import os
from typing import Any

import pytest
import treq
from http_fakes import Canned
from origin_harness import PEER, Origin
from treq.testing import StubTreq
from twisted.web.resource import Resource
from twisted.web.server import Request

from kraken.core import Digest, MetaInfo
from kraken.net import HTTPClientConfig, HTTPStatusError, ResponseTooLarge
from kraken.net.service import name_path
from kraken.origin.single import OriginClient
from kraken.workers import InlineWorker

DATA = b"layer bytes " * 100
DIGEST = Digest.from_bytes(DATA)
NS = "library/ubuntu"


class Scripted(Resource):
    """Answers the scripted (method, status) pairs in turn, passing everything
    else to the real origin; records the methods it saw."""

    isLeaf = True

    def __init__(self, inner: Resource, script: list[tuple[bytes, int]]) -> None:
        super().__init__()
        self._inner = inner
        self.script = list(script)
        self.seen: list[bytes] = []

    def render(self, request: Request) -> Any:
        self.seen.append(request.method)
        if self.script and self.script[0][0] == request.method:
            _, code = self.script.pop(0)
            request.setResponseCode(code)
            return b"scripted\n"
        return self._inner.render(request)


def client_for(origin: Origin, stub: StubTreq | None = None) -> OriginClient:
    return OriginClient(
        http=stub or origin.stub,
        base="http://origin.test/",
        clock=origin.clock,
        config=HTTPClientConfig(),
        worker=InlineWorker(),
    )


@pytest.fixture
def client(origin: Origin) -> OriginClient:
    return client_for(origin)


@pytest.fixture
def blob_file(tmp_path: Any) -> str:
    path = tmp_path / "layer"
    path.write_bytes(DATA)
    return str(path)


def test_upload_then_read(origin: Origin, client: OriginClient, blob_file: str) -> None:
    assert origin.run(client.stat(NS, DIGEST)) is None
    origin.run(client.upload(NS, DIGEST, blob_file, len(DATA)))
    assert origin.run(client.stat(NS, DIGEST)) == len(DATA)
    assert origin.run(client.read_small(NS, DIGEST, 1 << 20)) == DATA
    assert origin.run(client.metainfo(NS, DIGEST)) == MetaInfo.from_bytes(DATA, 4)
    assert not os.listdir(os.path.join(origin.root, "uploads"))


def test_empty_blob(origin: Origin, client: OriginClient, tmp_path: Any) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    digest = Digest.from_bytes(b"")
    origin.run(client.upload(NS, digest, str(empty), 0))
    assert origin.run(client.stat(NS, digest)) == 0
    assert origin.run(client.read_small(NS, digest, 10)) == b""
    assert origin.run(client.metainfo(NS, digest)).length == 0


def test_upload_of_a_stored_blob_succeeds(origin: Origin, client: OriginClient, blob_file: str) -> None:
    origin.run(client.upload(NS, DIGEST, blob_file, len(DATA)))
    scripted = Scripted(origin.http.resource(), [])
    origin.run(client_for(origin, origin.stub_for(scripted)).upload("other/repo", DIGEST, blob_file, len(DATA)))
    assert scripted.seen == [b"POST"], "409 on start: nothing more to do"
    assert not os.listdir(os.path.join(origin.root, "uploads"))


@pytest.mark.parametrize("method", [b"PATCH", b"PUT"])
def test_conflict_at_any_step_is_success(origin: Origin, blob_file: str, method: bytes) -> None:
    scripted = Scripted(origin.http.resource(), [(method, 409)])
    origin.run(client_for(origin, origin.stub_for(scripted)).upload(NS, DIGEST, blob_file, len(DATA)))
    assert scripted.seen == [b"POST", b"PATCH", b"PUT"][: [b"POST", b"PATCH", b"PUT"].index(method) + 1]


def test_upload_retries_from_the_start(origin: Origin, client: OriginClient, blob_file: str) -> None:
    scripted = Scripted(origin.http.resource(), [(b"PATCH", 503), (b"PUT", 502)])
    origin.run(client_for(origin, origin.stub_for(scripted)).upload(NS, DIGEST, blob_file, len(DATA)), step=1.0)
    assert scripted.seen == [b"POST", b"PATCH", b"POST", b"PATCH", b"PUT", b"POST", b"PATCH", b"PUT"]
    assert origin.run(client.read_small(NS, DIGEST, 1 << 20)) == DATA


def test_upload_gives_up_after_the_configured_retries(origin: Origin, blob_file: str) -> None:
    scripted = Scripted(origin.http.resource(), [(b"POST", 503)] * 10)
    with pytest.raises(HTTPStatusError) as e:
        origin.run(client_for(origin, origin.stub_for(scripted)).upload(NS, DIGEST, blob_file, len(DATA)), step=1.0)
    assert e.value.code == 503
    assert len(scripted.seen) == HTTPClientConfig().retries + 1


def test_upload_of_wrong_content_fails_at_once(origin: Origin, client: OriginClient, blob_file: str) -> None:
    wrong = Digest.from_bytes(b"not this")
    with pytest.raises(HTTPStatusError) as e:
        origin.run(client.upload(NS, wrong, blob_file, len(DATA)))
    assert e.value.code == 400
    assert str(DIGEST).encode() in e.value.body
    assert origin.run(client.stat(NS, wrong)) is None
    assert origin.run(client.stat(NS, DIGEST)) is None


def test_missing_blob(origin: Origin, client: OriginClient) -> None:
    assert origin.run(client.stat(NS, DIGEST)) is None
    assert origin.run(client.read_small(NS, DIGEST, 100)) is None
    assert origin.run(client.metainfo(NS, DIGEST)) is None


def test_read_small_refuses_big_blobs(origin: Origin, client: OriginClient, blob_file: str) -> None:
    origin.run(client.upload(NS, DIGEST, blob_file, len(DATA)))
    with pytest.raises(ResponseTooLarge):
        origin.run(client.read_small(NS, DIGEST, 100))


def test_get_returns_the_raw_response(origin: Origin, client: OriginClient, blob_file: str) -> None:
    origin.run(client.upload(NS, DIGEST, blob_file, len(DATA)))

    async def fetch(**kwargs: Any) -> tuple[int, Any, bytes]:
        response = await client.get(NS, DIGEST, **kwargs)
        return response.code, response.headers, await treq.content(response)

    assert origin.run(fetch())[::2] == (200, DATA)
    code, headers, body = origin.run(fetch(headers={b"Range": [b"bytes=10-19"]}))
    assert (code, body) == (206, DATA[10:20])
    code, headers, body = origin.run(fetch(method="HEAD"))
    assert (code, body) == (200, b"")
    assert headers.getRawHeaders(b"content-length") == [str(len(DATA)).encode()]
    missing = Digest.from_bytes(b"missing")

    async def fetch_missing() -> int:
        response = await client.get(NS, missing)
        await treq.content(response)
        return response.code

    assert origin.run(fetch_missing()) == 404


def test_unexpected_status_raises(origin: Origin) -> None:
    scripted = Scripted(origin.http.resource(), [(b"HEAD", 500), (b"GET", 403)])
    client = client_for(origin, origin.stub_for(scripted))
    with pytest.raises(HTTPStatusError) as e:
        origin.run(client.stat(NS, DIGEST))
    assert e.value.code == 500
    with pytest.raises(HTTPStatusError) as e:
        origin.run(client.metainfo(NS, DIGEST))
    assert e.value.code == 403


def test_health(origin: Origin, client: OriginClient) -> None:
    assert origin.run(client.health()) is True
    broken = client_for(origin, origin.stub_for(Scripted(origin.http.resource(), [(b"GET", 503)])))
    assert origin.run(broken.health()) is False


def test_namespaces_are_quoted_per_segment(origin: Origin, client: OriginClient, blob_file: str) -> None:
    ns = "team-a/deep/repo"
    origin.run(client.upload(ns, DIGEST, blob_file, len(DATA)))
    assert origin.run(client.stat(ns, DIGEST)) == len(DATA)
    # quoted per segment, and a name outside the registry's grammar is refused by the origin
    with pytest.raises(HTTPStatusError, match="400: b\"invalid namespace 'team a/"):
        origin.run(client.upload("team a/ü/repo%2F", DIGEST, blob_file, len(DATA)))
    assert name_path("team a/repo%2F") == "team%20a/repo%252F"
    for bad in ("", "/abs", "a//b", "trailing/"):
        with pytest.raises(ValueError):
            name_path(bad)


def test_upload_timeouts_grow_with_the_blob(origin: Origin, blob_file: str) -> None:
    """treq's timeout runs until the response headers arrive, so the PATCH
    (sending the blob) and the PUT (the origin hashing it) get the base
    timeout plus the size at min_transfer_rate; the rest get the base."""
    stub = origin.stub
    seen: list[tuple[str, float]] = []
    real = stub.request

    def recording(method: str, url: str, **kwargs: Any) -> Any:
        seen.append((method, kwargs["timeout"]))
        return real(method, url, **kwargs)

    stub.request = recording  # type: ignore[method-assign]
    config = HTTPClientConfig(timeout=60.0, min_transfer_rate=100)
    client = OriginClient(
        http=stub, base="http://origin.test", clock=origin.clock, config=config, worker=InlineWorker()
    )
    origin.run(client.upload(NS, DIGEST, blob_file, len(DATA)))
    slow = 60.0 + len(DATA) / 100
    assert seen == [("POST", 60.0), ("PATCH", slow), ("PUT", slow)]


def test_peers(origin: Origin, client: OriginClient, blob_file: str) -> None:
    assert origin.run(client.peers(DIGEST)) == []
    origin.run(client.upload(NS, DIGEST, blob_file, len(DATA)))
    assert origin.run(client.peers(DIGEST)) == [PEER]


def test_peers_is_retried(origin: Origin, client: OriginClient, blob_file: str) -> None:
    origin.run(client.upload(NS, DIGEST, blob_file, len(DATA)))
    scripted = Scripted(origin.http.resource(), [(b"GET", 503), (b"GET", 502)])
    assert origin.run(client_for(origin, origin.stub_for(scripted)).peers(DIGEST), step=1.0) == [PEER]
    assert scripted.seen == [b"GET"] * 3


def test_peers_unexpected_status_raises_at_once(origin: Origin) -> None:
    scripted = Scripted(origin.http.resource(), [(b"GET", 404)])
    with pytest.raises(HTTPStatusError) as e:
        origin.run(client_for(origin, origin.stub_for(scripted)).peers(DIGEST), step=1.0)
    assert e.value.code == 404
    assert scripted.seen == [b"GET"]


@pytest.mark.parametrize(
    "body",
    [
        b"nope",
        b"\xff",
        b"[]",
        b"{}",
        b'{"peers": {}}',
        b'{"peers": "x"}',
        b'{"peers": [{"peer_id": "zz"}]}',
        b'{"peers": [1]}',
    ],
)
def test_peers_malformed_answers_raise(origin: Origin, body: bytes) -> None:
    canned = Canned(200, body)
    with pytest.raises(HTTPStatusError, match="bad peers answer") as e:
        origin.run(client_for(origin, origin.stub_for(canned)).peers(DIGEST))
    assert e.value.code == 200
    assert canned.seen == 1, "a malformed answer is not retried"
