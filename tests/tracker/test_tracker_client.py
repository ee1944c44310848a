"""TrackerClient against the real TrackerHTTP behind StubTreq."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tracker_fakes import BASE, NAMESPACE, App, blob, peer
from treq.testing import StubTreq
from twisted.web.resource import Resource
from twisted.web.server import Request

from kraken.net import HTTPClientConfig, HTTPStatusError
from kraken.tracker.client import TrackerClient

CONFIG = HTTPClientConfig(retries=2, backoff=1.0, max_backoff=1.0, timeout=30.0)
INFO_HASH = "ab" * 32


class Flaky(Resource):
    """Answers the first ``failures`` requests with ``code`` (and ``body``), then passes them to ``inner``."""

    isLeaf = True

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        self.failures = 0
        self.code = 503
        self.body = b"try later"
        self.requests: list[tuple[bytes, bytes]] = []
        self.bodies: list[bytes] = []

    def render(self, request: Request) -> Any:
        self.requests.append((request.method, request.uri))
        assert request.content is not None
        self.bodies.append(request.content.read())
        request.content.seek(0)
        if len(self.requests) <= self.failures:
            request.setResponseCode(self.code)
            return self.body
        return self.inner.render(request)


class Fixture:
    def __init__(self) -> None:
        self.app = App(origin_peers=[peer(200, complete=True, origin=True)])
        self.server = Flaky(self.app.http.resource())
        self.stub = StubTreq(self.server)
        self.client = TrackerClient(http=self.stub, base=BASE + "/", clock=self.app.clock, config=CONFIG)

    def run(self, work: Any) -> Any:
        from tracker_fakes import result_of

        def pump() -> None:
            self.app.clock.advance(0.5)
            self.stub.flush()

        return result_of(work, pump)


@pytest.fixture
def fx() -> Any:
    f = Fixture()
    yield f
    assert [c for c in f.app.clock.getDelayedCalls() if c.active()] == []


def test_health(fx: Fixture) -> None:
    assert fx.run(fx.client.health()) is True
    fx.server.failures, fx.server.code = 1, 500
    fx.server.requests.clear()
    assert fx.run(fx.client.health()) is False


def test_announce(fx: Fixture) -> None:
    digest, _ = blob("x")
    seeder = peer(1, complete=True)
    assert fx.run(fx.client.announce(seeder, NAMESPACE, digest, INFO_HASH)) == ([], 3.0)
    peers, interval = fx.run(fx.client.announce(peer(2), NAMESPACE, digest, INFO_HASH))
    assert interval == 3.0
    assert peers == [peer(200, complete=True, origin=True), seeder]


def test_announce_reports_unreachable_peers(fx: Fixture) -> None:
    # The field the tracker reads: a JSON list of peer ids, only when there are any, at most 50.
    fx.server.failures, fx.server.code, fx.server.body = 3, 200, b'{"peers": [], "interval": 3}'
    digest = blob("x")[0]
    ids = [f"{i:040x}" for i in range(60)]
    fx.run(fx.client.announce(peer(2), NAMESPACE, digest, INFO_HASH, unreachable=ids[:2]))
    fx.run(fx.client.announce(peer(2), NAMESPACE, digest, INFO_HASH))
    fx.run(fx.client.announce(peer(2), NAMESPACE, digest, INFO_HASH, unreachable=ids))
    docs = [json.loads(body) for body in fx.server.bodies]
    assert docs[0]["unreachable"] == ids[:2]
    assert "unreachable" not in docs[1]
    assert docs[2]["unreachable"] == ids[:50]
    assert all(set(doc) - {"unreachable"} == set(docs[1]) for doc in docs)


def test_announce_is_retried(fx: Fixture) -> None:
    fx.server.failures = 2
    peers, _ = fx.run(fx.client.announce(peer(2), NAMESPACE, blob("x")[0], INFO_HASH))
    assert peers == [peer(200, complete=True, origin=True)]
    assert len(fx.server.requests) == 3


def test_announce_refused(fx: Fixture) -> None:
    with pytest.raises(HTTPStatusError) as e:
        fx.run(fx.client.announce(peer(2), NAMESPACE, blob("x")[0], "not-a-hash"))
    assert e.value.code == 400
    assert b"info_hash" in e.value.body


@pytest.mark.parametrize(
    "body",
    [
        b"nope",
        b'{"peers": [], "interval": 0}',
        b'{"peers": [{"peer_id": "zz"}], "interval": 3}',
        b'{"interval": 3}',
        b'{"peers": [], "interval": true}',
    ],
)
def test_announce_bad_answers(fx: Fixture, body: bytes) -> None:
    fx.server.failures, fx.server.code, fx.server.body = 1, 200, body
    with pytest.raises(HTTPStatusError, match="bad announce answer"):
        fx.run(fx.client.announce(peer(2), NAMESPACE, blob("x")[0], INFO_HASH))


def test_metainfo(fx: Fixture) -> None:
    digest, info = fx.app.origin.add("m")
    assert fx.run(fx.client.metainfo(NAMESPACE, digest)) == info
    assert fx.run(fx.client.metainfo(NAMESPACE, blob("absent")[0])) is None


def test_metainfo_for_another_blob_is_refused(fx: Fixture) -> None:
    digest, _ = blob("asked")
    _, other = blob("other")
    fx.server.failures, fx.server.code, fx.server.body = 1, 200, other.to_json()
    with pytest.raises(HTTPStatusError, match="metainfo is for"):
        fx.run(fx.client.metainfo(NAMESPACE, digest))
    fx.server.requests.clear()
    fx.server.body = b"{}"
    with pytest.raises(HTTPStatusError, match="bad metainfo"):
        fx.run(fx.client.metainfo(NAMESPACE, digest))


def test_metainfo_origin_failure_is_retried_then_raised(fx: Fixture) -> None:
    digest, _ = fx.app.origin.add("m")
    fx.app.origin.error = RuntimeError("origin down")
    with pytest.raises(HTTPStatusError) as e:
        fx.run(fx.client.metainfo(NAMESPACE, digest))
    assert e.value.code == 502
    assert len(fx.server.requests) == 3  # retries + 1
