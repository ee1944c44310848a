"""The build-index with a tag archive and neighbours, through StubTreq: write-back
of accepted tags, reads on a miss, manifest records for backend-only tags, and
duplicate puts between two real apps."""

from __future__ import annotations

import json
from typing import Any

import pytest
from buildindex_fakes import (
    BASE,
    App,
    FakeOrigin,
    FakeRegistryBackend,
    InlineReactor,
    MemoryBackend,
    image_manifest,
    result_of,
    tag_archive,
)
from treq.testing import StubTreq
from twisted.logger import capturedLogs
from twisted.web.resource import Resource
from twisted.web.server import Request

from kraken.backends import BackendUnavailable
from kraken.buildindex.archive import TagArchive
from kraken.buildindex.client import BuildIndexClient
from kraken.core import Digest
from kraken.net import HTTPClientConfig

D1 = Digest.from_bytes(b"one")
D2 = Digest.from_bytes(b"two")
NO_RETRIES = HTTPClientConfig(retries=0, timeout=30.0)


@pytest.fixture
def memory() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def upstream() -> FakeRegistryBackend:
    return FakeRegistryBackend()


@pytest.fixture
def archive(tmp_path: Any, memory: MemoryBackend, upstream: FakeRegistryBackend) -> TagArchive:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return tag_archive(
        str(scratch),
        ("upstream/.*", "registry", upstream),
        ("static/.*", "http", MemoryBackend()),
        (".*", "s3", memory),
    )


@pytest.fixture
def app(tmp_path: Any, archive: TagArchive) -> Any:
    a = App(str(tmp_path / "tags.db"), archive=archive)
    yield a
    a.close()


def pushed(app: App, seed: str) -> Digest:
    config, layer = f"config {seed}".encode(), f"layer {seed}".encode()
    app.origin.add(config)
    app.origin.add(layer)
    return app.origin.add(image_manifest(config, [layer]))


def put_tag(app: App, repo: str, tag: str, digest: Digest) -> tuple[int, bytes]:
    return app.request("PUT", f"/repositories/{repo}/tags/{tag}", data=str(digest).encode())


def pending(app: App) -> list[Any]:
    return result_of(app.tags.pending_writebacks())


# -- write-back -------------------------------------------------------------------


def test_accepted_tag_is_written_back_as_a_link_file(app: App, memory: MemoryBackend) -> None:
    digest = pushed(app, "a")
    assert put_tag(app, "team/app", "v1", digest) == (201, str(digest).encode())
    assert memory.blobs == {"team/app:v1": str(digest).encode()}
    assert pending(app) == []


def test_backend_outage_does_not_fail_the_push(app: App, memory: MemoryBackend) -> None:
    digest = pushed(app, "a")
    memory.failures = 1
    assert put_tag(app, "r", "v1", digest)[0] == 201
    assert app.request("GET", "/repositories/r/tags/v1") == (200, str(digest).encode())
    assert [p[:4] for p in pending(app)] == [("r", "v1", True, 1)]
    app.reactor.advance(1.0)
    assert memory.blobs == {"r:v1": str(digest).encode()}


def test_read_only_namespace_queues_nothing(app: App, memory: MemoryBackend) -> None:
    digest = pushed(app, "a")
    assert put_tag(app, "upstream/app", "v1", digest)[0] == 201
    assert pending(app) == [] and memory.calls == []


# -- read on a miss ---------------------------------------------------------------


def test_miss_is_answered_from_the_backend_and_not_cached(app: App, memory: MemoryBackend) -> None:
    memory.blobs["r:v1"] = str(D1).encode()
    assert app.request("GET", "/repositories/r/tags/v1") == (200, str(D1).encode())
    assert app.request("HEAD", "/repositories/r/tags/v1") == (200, b"")
    memory.blobs["r:v1"] = str(D2).encode()  # moved by another node
    assert app.request("GET", "/repositories/r/tags/v1") == (200, str(D2).encode())
    assert result_of(app.tags.get_tag("r", "v1")) is None
    assert app.json("GET", "/repositories/r/tags")[0] == 404  # listings stay local


def test_local_tag_wins_over_the_backend(app: App, memory: MemoryBackend) -> None:
    digest = pushed(app, "a")
    put_tag(app, "r", "v1", digest)
    memory.blobs["r:v1"] = str(D2).encode()
    memory.calls.clear()
    assert app.request("GET", "/repositories/r/tags/v1") == (200, str(digest).encode())
    assert memory.calls == []


def test_backend_failure_is_a_logged_404(app: App, memory: MemoryBackend) -> None:
    memory.failures = 1
    with capturedLogs() as events:
        assert app.request("HEAD", "/repositories/r/tags/v1")[0] == 404
    [warning] = [e for e in events if "backend lookup" in e["log_format"]]
    assert warning["namespace"] == "r" and "storage is down" in warning["error"]


def test_garbage_in_the_link_file_is_a_miss(app: App, memory: MemoryBackend) -> None:
    memory.blobs["r:v1"] = b"not a digest"
    with capturedLogs() as events:
        assert app.request("GET", "/repositories/r/tags/v1")[0] == 404
    assert any("not a digest" in e["log_format"] for e in events)


def test_upstream_registry_tags_resolve(app: App, upstream: FakeRegistryBackend) -> None:
    upstream.tags[("upstream/app", "v1")] = D1
    assert app.request("GET", "/repositories/upstream/app/tags/v1") == (200, str(D1).encode())
    assert app.request("GET", "/repositories/upstream/app/tags/v2")[0] == 404
    upstream.error = BackendUnavailable("upstream down")
    assert app.request("GET", "/repositories/upstream/app/tags/v1")[0] == 404


def test_http_backend_holds_no_tags(app: App) -> None:
    assert app.request("GET", "/repositories/static/x/tags/v1")[0] == 404


def test_manifest_record_of_a_backend_only_tag_comes_from_the_origin(app: App, upstream: FakeRegistryBackend) -> None:
    digest = pushed(app, "pulled")
    upstream.tags[("upstream/app", "v1")] = digest
    code, doc = app.json("GET", f"/repositories/upstream/app/manifests/{digest}")
    assert code == 200
    assert doc["digest"] == str(digest) and doc["media_type"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert doc["size"] == len(app.origin.blobs[digest])
    # recorded: the origin is not asked again
    app.origin.calls.clear()
    assert app.json("GET", f"/repositories/upstream/app/manifests/{digest}")[0] == 200
    assert app.origin.calls == []


def test_manifest_record_miss_when_the_origin_lacks_it_or_it_is_no_manifest(app: App) -> None:
    assert app.json("GET", f"/repositories/r/manifests/{D1}")[0] == 404
    layer = app.origin.add(b"just a layer")
    assert app.json("GET", f"/repositories/r/manifests/{layer}")[0] == 404
    assert result_of(app.tags.get_manifest("r", layer)) is None


def test_without_backends_a_manifest_record_miss_does_not_ask_the_origin(tmp_path: Any) -> None:
    plain = App(str(tmp_path / "plain.db"))
    try:
        digest = pushed(plain, "a")
        plain.origin.calls.clear()
        assert plain.json("GET", f"/repositories/r/manifests/{digest}")[0] == 404
        assert plain.origin.calls == []
    finally:
        plain.close()


# -- the duplicate route ----------------------------------------------------------


def duplicate(app: App, repo: str, tag: str, body: Any) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return app.request("PUT", f"/internal/duplicate/repositories/{repo}/tags/{tag}", data=data)


def test_duplicate_is_checked_and_stored_with_a_delayed_gentle_write_back(app: App, memory: MemoryBackend) -> None:
    d1 = pushed(app, "one")
    assert duplicate(app, "r", "v1", {"digest": str(d1), "delay": 600}) == (201, str(d1).encode())
    assert app.request("GET", "/repositories/r/tags/v1") == (200, str(d1).encode())
    [(repo, tag, overwrite, attempts, due, _)] = pending(app)
    assert (repo, tag, overwrite, attempts, due) == ("r", "v1", False, 0, 600.0)
    assert memory.calls == []
    memory.blobs["r:v1"] = str(D2).encode()  # the accepting node wrote a newer value meanwhile
    app.reactor.advance(600.0)
    assert memory.blobs["r:v1"] == str(D2).encode()
    assert pending(app) == []


def test_a_duplicate_cannot_repoint_a_tag_to_a_missing_or_incomplete_image(app: App) -> None:
    good = pushed(app, "good")
    assert put_tag(app, "r", "v1", good)[0] == 201
    layer = b"layer missing"
    app.origin.add(b"config missing")
    incomplete = app.origin.add(image_manifest(b"config missing", [layer]))
    status, body = duplicate(app, "r", "v1", {"digest": str(incomplete), "delay": 0})
    assert status == 400 and json.loads(body)["missing"] == [str(Digest.from_bytes(layer))]
    status, body = duplicate(app, "r", "v1", {"digest": str(D1), "delay": 0})
    assert status == 400 and json.loads(body) == {
        "error": "cannot tag r:v1: manifest missing on the origin",
        "missing": [str(D1)],
    }
    assert app.request("GET", "/repositories/r/tags/v1") == (200, str(good).encode())


@pytest.mark.parametrize(
    "body",
    [
        b"sha256:nope",
        {"digest": "sha256:12"},
        {"digest": str(D1), "delay": -1},
        {"digest": str(D1), "delay": "soon"},
        {"digest": str(D1), "delay": 10**9},
        {"delay": 5},
    ],
)
def test_bad_duplicates_are_refused(app: App, body: Any) -> None:
    assert duplicate(app, "r", "v1", body)[0] == 400
    assert result_of(app.tags.get_tag("r", "v1")) is None


# -- two nodes --------------------------------------------------------------------


class Flaky(Resource):
    """Answers the first ``failures`` requests with 503, then passes them on."""

    isLeaf = True

    def __init__(self, inner: Any, failures: int) -> None:
        super().__init__()
        self.inner, self.failures, self.seen = inner, failures, 0

    def render(self, request: Request) -> Any:
        self.seen += 1
        if self.seen <= self.failures:
            request.setResponseCode(503)
            return b"busy"
        return self.inner.render(request)


class Pair:
    """Node A duplicates to node B (StubTreq over B's real app); both share one
    clock, one backend and one origin."""

    def __init__(self, tmp_path: Any, archive: TagArchive, failures: int = 0) -> None:
        self.reactor = InlineReactor()
        self.b = App(str(tmp_path / "b.db"), archive=archive, reactor=self.reactor)
        self.b_front = Flaky(self.b.http.resource(), failures)
        self.b_stub = StubTreq(self.b_front)
        client = BuildIndexClient(http=self.b_stub, base=BASE, clock=self.reactor, config=NO_RETRIES)
        self.a = App(
            str(tmp_path / "a.db"), archive=archive, reactor=self.reactor, neighbours=[(BASE, client)], stagger=100.0
        )
        self.a.pump = self.pump  # type: ignore[method-assign]
        self.b.origin = self.b.index.origin = self.a.origin  # one origin cluster behind both nodes

    def pump(self) -> None:
        self.reactor.advance(0)
        self.a.stub.flush()
        self.b_stub.flush()

    def close(self) -> None:
        self.a.close()
        self.b.close()


def test_duplicate_put_reaches_the_other_node(tmp_path: Any, archive: TagArchive, memory: MemoryBackend) -> None:
    pair = Pair(tmp_path, archive)
    try:
        digest = pushed(pair.a, "a")
        assert put_tag(pair.a, "r", "v1", digest)[0] == 201
        pair.pump()
        result_of(pair.a.duplicator.when_idle(), pair.pump)  # type: ignore[union-attr]
        assert result_of(pair.b.tags.get_tag("r", "v1")) == digest
        assert pair.b.index.origin is pair.a.origin  # checked again on B, against the same origin cluster
        # A wrote it back at once; B's own write-back waits 100 s (1 x stagger) and then finds it there
        assert memory.blobs == {"r:v1": str(digest).encode()}
        assert [p[:3] for p in pending(pair.b)] == [("r", "v1", False)]
        pair.reactor.advance(100.0)
        pair.pump()
        assert pending(pair.b) == []
        assert pair.b.writeback.stats.existed == 1  # type: ignore[union-attr]
        assert [c for c in memory.calls if c[0] == "upload"] == [("upload", "r:v1")]
        # B never duplicates further and A got nothing back
        assert pair.b.duplicator is None and pair.a.duplicator.stats.sent == 1  # type: ignore[union-attr]
    finally:
        pair.close()


def test_failed_duplicates_are_retried_with_backoff_for_as_long_as_it_takes(tmp_path: Any, archive: TagArchive) -> None:
    pair = Pair(tmp_path, archive, failures=1)
    try:
        digest = pushed(pair.a, "a")
        with capturedLogs() as events:
            assert put_tag(pair.a, "r", "v1", digest)[0] == 201  # the client's PUT does not wait
            pair.pump()
        assert result_of(pair.b.tags.get_tag("r", "v1")) is None
        [warning] = [e for e in events if "failed (attempt" in e["log_format"]]
        assert (warning["peer"], warning["delay"], warning["attempts"]) == (BASE, 10.0, 1)
        pair.reactor.advance(10.0)
        pair.pump()
        assert result_of(pair.b.tags.get_tag("r", "v1")) == digest
        assert result_of(pair.a.duplicator.pending()) == []  # type: ignore[union-attr]

        pair.b_front.failures = 10**6  # B is down: tried 10, 20, 40, 40... s apart, never given up
        other = pushed(pair.a, "b")
        put_tag(pair.a, "r", "v2", other)
        for wait in (10.0, 20.0, 40.0, 40.0, 40.0):
            pair.reactor.advance(wait)
            pair.pump()
        [queued] = result_of(pair.a.duplicator.pending())  # type: ignore[union-attr]
        assert (queued.tag, queued.digest, queued.attempts) == ("v2", other, 6)
        assert "503" in (queued.last_error or "")
        pair.b_front.failures = 0  # B is back
        pair.reactor.advance(40.0)
        pair.pump()
        assert result_of(pair.b.tags.get_tag("r", "v2")) == other
        assert result_of(pair.a.duplicator.pending()) == []  # type: ignore[union-attr]
        assert pair.a.duplicator.stats.given_up == 0  # type: ignore[union-attr]
    finally:
        pair.close()


def test_a_refused_duplicate_is_given_up_after_its_attempts(tmp_path: Any, archive: TagArchive) -> None:
    pair = Pair(tmp_path, archive)
    try:
        digest = pushed(pair.a, "a")
        pair.b.origin = pair.b.index.origin = FakeOrigin()  # B's origin lacks the image: B answers 400
        with capturedLogs() as events:
            put_tag(pair.a, "r", "v1", digest)
            pair.pump()
            pair.reactor.advance(10.0)
            pair.pump()
            pair.reactor.advance(20.0)
            pair.pump()
        assert pair.a.duplicator.stats.given_up == 1  # type: ignore[union-attr]
        assert [e["attempts"] for e in events if "given up" in e["log_format"]] == [3]
        assert result_of(pair.a.duplicator.pending()) == []  # type: ignore[union-attr]
    finally:
        pair.close()
