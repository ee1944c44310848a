"""BuildIndexClient against the real BuildIndexHTTP behind StubTreq."""

from __future__ import annotations

from typing import Any

import pytest
from buildindex_fakes import BASE, App, blob, image_manifest
from treq.testing import StubTreq
from twisted.web.resource import Resource
from twisted.web.server import Request

from kraken.buildindex.client import BuildIndexClient, ManifestRefused, Refused, TagRefused
from kraken.core import Digest
from kraken.net import HTTPClientConfig, HTTPStatusError
from kraken.net.service import name_path
from kraken.registry.source import ManifestRecord, Page

CONFIG = HTTPClientConfig(retries=2, backoff=1.0, max_backoff=1.0, timeout=30.0)


class Flaky(Resource):
    """Answers the first ``failures`` requests with ``code``, then passes
    requests to ``inner``; counts requests."""

    isLeaf = True

    def __init__(self, inner: Any, failures: int = 0, code: int = 503) -> None:
        super().__init__()
        self.inner = inner
        self.failures = failures
        self.code = code
        self.requests: list[tuple[bytes, bytes]] = []

    def render(self, request: Request) -> Any:
        self.requests.append((request.method, request.uri))
        if len(self.requests) <= self.failures:
            request.setResponseCode(self.code)
            return b"try later"
        return self.inner.render(request)


class Fixture:
    def __init__(self, path: str) -> None:
        self.app = App(path, max_page=3)
        self.server = Flaky(self.app.http.resource())
        self.stub = StubTreq(self.server)
        self.client = BuildIndexClient(http=self.stub, base=BASE + "/", clock=self.app.reactor, config=CONFIG)

    def run(self, work: Any) -> Any:
        from buildindex_fakes import result_of

        def pump() -> None:
            self.app.reactor.advance(0.5)
            self.stub.flush()

        return result_of(work, pump)

    def image(self, seed: str) -> Digest:
        config, layer = f"config {seed}".encode(), f"layer {seed}".encode()
        self.app.origin.add(config)
        self.app.origin.add(layer)
        return self.app.origin.add(image_manifest(config, [layer]))


@pytest.fixture
def fx(tmp_path: Any) -> Any:
    f = Fixture(str(tmp_path / "tags.db"))
    yield f
    assert [c for c in f.app.reactor.getDelayedCalls() if c.active()] == []
    f.app.close()


def test_health(fx: Fixture) -> None:
    assert fx.run(fx.client.health()) is True
    fx.server.failures, fx.server.code = 1, 500
    fx.server.requests.clear()
    assert fx.run(fx.client.health()) is False


def test_tags_round_trip(fx: Fixture) -> None:
    manifest = fx.image("x")
    assert fx.run(fx.client.get_tag("team/app", "v1")) is None
    assert fx.run(fx.client.list_tags("team/app", None, None)) is None
    assert fx.run(fx.client.put_tag("team/app", "v1", manifest)) is None
    assert fx.run(fx.client.put_tag("team/app", "v1", manifest)) is None  # re-put is fine
    for tag in ["v2", "latest", "v3"]:
        fx.run(fx.client.put_tag("team/app", tag, manifest))
    assert fx.run(fx.client.get_tag("team/app", "v1")) == manifest
    assert fx.run(fx.client.list_tags("team/app", None, None)) == Page(("latest", "v1", "v2"), True)
    assert fx.run(fx.client.list_tags("team/app", 2, "v1")) == Page(("v2", "v3"), False)
    fx.run(fx.client.put_tag("other", "v1", manifest))
    assert fx.run(fx.client.list_repositories(None, None)) == Page(("other", "team/app"), False)
    assert fx.run(fx.client.list_repositories(1, "other")) == Page(("team/app",), False)


def test_put_tag_refused(fx: Fixture) -> None:
    _config, config_body = blob("c")
    layer, layer_body = blob("l")
    manifest = fx.app.origin.add(image_manifest(config_body, [layer_body]))
    fx.app.origin.add(config_body)
    with pytest.raises(TagRefused) as info:
        fx.run(fx.client.put_tag("r", "v1", manifest))
    assert info.value.missing == [layer]
    assert isinstance(info.value, Refused)
    assert "missing" in str(info.value)
    # refusals are answers, not failures: no retry
    assert len(fx.server.requests) == 1


def test_manifest_records_and_referrers(fx: Fixture) -> None:
    subject = Digest.from_bytes(b"subject")
    body = b"an artifact manifest"
    record = ManifestRecord(
        digest=fx.app.origin.add(body),
        media_type="application/vnd.oci.image.manifest.v1+json",
        size=len(body),
        artifact_type="application/vnd.example.sig",
        subject=subject,
        annotations={"a": "b"},
    )
    assert fx.run(fx.client.get_manifest("r/s", record.digest)) is None
    assert fx.run(fx.client.put_manifest("r/s", record)) is None
    assert fx.run(fx.client.get_manifest("r/s", record.digest)) == record
    assert fx.run(fx.client.referrers("r/s", subject)) == [record]
    assert fx.run(fx.client.referrers("r/s", record.digest)) == []

    absent = ManifestRecord(digest=Digest.from_bytes(b"absent"), media_type="a/b", size=6)
    with pytest.raises(ManifestRefused) as info:
        fx.run(fx.client.put_manifest("r/s", absent))
    assert info.value.missing == [absent.digest]


def test_retries_503_then_succeeds(fx: Fixture) -> None:
    manifest = fx.image("x")
    fx.run(fx.client.put_tag("r", "v1", manifest))
    fx.server.requests.clear()
    fx.server.failures = 2
    assert fx.run(fx.client.get_tag("r", "v1")) == manifest
    assert len(fx.server.requests) == 3


def test_gives_up_after_retries(fx: Fixture) -> None:
    fx.server.failures = 100
    with pytest.raises(HTTPStatusError) as info:
        fx.run(fx.client.list_repositories(None, None))
    assert info.value.code == 503
    assert len(fx.server.requests) == CONFIG.retries + 1


def test_unexpected_status_is_not_retried(fx: Fixture) -> None:
    fx.server.failures, fx.server.code = 1, 500
    with pytest.raises(HTTPStatusError) as info:
        fx.run(fx.client.get_manifest("r", Digest.from_bytes(b"x")))
    assert info.value.code == 500
    assert len(fx.server.requests) == 1


def test_paths_are_quoted_per_segment(fx: Fixture) -> None:
    assert name_path("a/b.c/d-e") == "a/b.c/d-e"
    assert name_path("we ird/x?y") == "we%20ird/x%3Fy"
    with pytest.raises(ValueError):
        name_path("a//b")
    # the server sees the decoded name and rejects it as a name, not a route
    with pytest.raises(HTTPStatusError) as info:
        fx.run(fx.client.get_tag("we ird/x?y", "v1"))
    assert info.value.code == 400
    manifest = fx.image("x")
    fx.run(fx.client.put_tag("a/b.c/d-e", "v1.0_rc-1", manifest))
    assert fx.server.requests[-1][1] == b"/repositories/a/b.c/d-e/tags/v1.0_rc-1"
    assert fx.run(fx.client.get_tag("a/b.c/d-e", "v1.0_rc-1")) == manifest
