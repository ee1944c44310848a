"""The agent's registry as a containerd mirror (docs/operations.md section 16): ``?ns=`` on every route,
HEADs answered from metadata, ``Range: bytes=N-``, and no stranded pull (fast 404s, a bounded 503 when the
tracker or build-index is silent or failing, never an upstream 401).

The registry as ``kraken.agent.tap`` builds it: ``Namespaced(RegistryAPI(read_only=True))`` over
``AgentSource`` with ``sizes`` and ``answer_timeout``, a fake scheduler and build-index behind StubTreq."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agent_fakes import FakeScheduler, FakeTags, TickingClient, image, layer
from results import result_of
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from kraken.agent.mirror import Namespaced, valid_namespace
from kraken.agent.source import AgentSource, LocalOrTracker
from kraken.agent.source import Mirror as MirrorRules
from kraken.agent.tap import READ_ONLY_MESSAGE
from kraken.core import Digest, MetaInfo
from kraken.net import HTTPStatusError
from kraken.registry.http import RegistryAPI
from kraken.registry.manifests import DOCKER_MANIFEST
from kraken.workers import InlineWorker

REPO = "library/alpine"
TIMEOUT = 3.0


class Sizes:
    """``BlobSizes`` over the fake scheduler's files; ``stalled`` never answers, ``failing`` raises."""

    def __init__(self, scheduler: FakeScheduler) -> None:
        self.scheduler = scheduler
        self.stalled = False
        self.failing: Exception | None = None
        self.calls: list[Digest] = []

    async def __call__(self, namespace: str, digest: Digest) -> int | None:
        self.calls.append(digest)
        if self.stalled:
            await Deferred()
        if self.failing is not None:
            raise self.failing
        return _size(self.scheduler.paths.get(digest))


def _size(path: str | None) -> int | None:
    return None if path is None else Path(path).stat().st_size


class StallingTags(FakeTags):
    def __init__(self) -> None:
        super().__init__()
        self.stalled = False
        self.failing: Exception | None = None

    async def get_tag(self, repo: str, tag: str) -> Digest | None:
        if self.stalled:
            await Deferred()
        if self.failing is not None:
            raise self.failing
        return await super().get_tag(repo, tag)


class Mirror:
    def __init__(self, tmp_path: Path, clock: task.Clock) -> None:
        self.scheduler = FakeScheduler(tmp_path / "cache")
        self.tags = StallingTags()
        self.sizes = Sizes(self.scheduler)
        source = AgentSource(
            self.scheduler,
            self.tags,
            worker=InlineWorker(),
            max_manifest_size=4 << 20,
            mirror=MirrorRules(self.sizes, clock, TIMEOUT),
        )
        api = RegistryAPI(source, None, clock=clock, read_only=True, read_only_message=READ_ONLY_MESSAGE)
        self.events: list[dict[str, Any]] = []
        self.resource = Namespaced(api.resource())
        self.resource.log = Logger(observer=self.events.append, namespace="test")
        self.client = TickingClient(self.resource, clock)

    def tag(self, repo: str, tag: str, manifest: bytes) -> Digest:
        self.tags.tags[(repo, tag)] = digest = self.scheduler.add(manifest)
        return digest


@pytest.fixture(name="mirror")
def _mirror(tmp_path: Path, clock: task.Clock) -> Mirror:
    return Mirror(tmp_path, clock)


# -- ?ns= ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ns", ["docker.io", "registry-1.docker.io", "127.0.0.1:5000", "ghcr.io", "[::1]:5000", "h:1"])
def test_ns_is_echoed_on_every_route(mirror: Mirror, ns: str) -> None:
    manifest = image(mirror.scheduler)
    digest = mirror.tag(REPO, "3.19", manifest)
    blob = mirror.scheduler.add(layer("ns"))
    for method, path in [
        ("GET", "/v2/"),
        ("HEAD", f"/v2/{REPO}/manifests/3.19"),
        ("GET", f"/v2/{REPO}/manifests/{digest}"),
        ("HEAD", f"/v2/{REPO}/blobs/{blob}"),
        ("GET", f"/v2/{REPO}/blobs/{blob}"),
        ("GET", f"/v2/{REPO}/manifests/missing"),
    ]:
        r = mirror.client.request(method, f"{path}?ns={ns}", headers={"Accept": DOCKER_MANIFEST})
        assert r.header("OCI-Namespace") == ns, (method, path, r.code)


def test_no_ns_no_header(mirror: Mirror) -> None:
    r = mirror.client.get("/v2/")
    assert r.code == 200
    assert r.header("OCI-Namespace") is None


@pytest.mark.parametrize(
    "query",
    ["ns=", "ns=bad%20host", "ns=a:99999", "ns=a:0", "ns=-a.io", "ns=a..io", "ns=docker.io&ns=ghcr.io", "ns=[zz]:1"],
)
def test_a_bad_ns_is_400_oci_json_before_anything_is_asked(mirror: Mirror, query: str) -> None:
    r = mirror.client.get(f"/v2/{REPO}/manifests/latest?{query}")
    assert r.code == 400
    assert r.error_code == "NAME_INVALID"
    assert r.header("Content-Type") == "application/json"
    assert "ns must be one registry host" in r.json()["errors"][0]["message"]
    assert mirror.tags.calls == [] and mirror.scheduler.downloads == []


def test_valid_namespace() -> None:
    assert valid_namespace("docker.io") and valid_namespace("[2001:db8::1]") and valid_namespace("10.0.0.1:443")
    assert not valid_namespace("a" * 256) and not valid_namespace("[10.0.0.1]") and not valid_namespace("[::1]x")


# -- HEAD and Range ----------------------------------------------------------------------------------------------


def test_head_of_a_manifest_by_tag_and_by_digest(mirror: Mirror) -> None:
    manifest = image(mirror.scheduler)
    digest = mirror.tag(REPO, "3.19", manifest)
    for ref in ("3.19", str(digest)):
        r = mirror.client.head(f"/v2/{REPO}/manifests/{ref}?ns=docker.io", headers={"Accept": DOCKER_MANIFEST})
        assert r.code == 200
        assert r.body == b""
        assert r.header("Docker-Content-Digest") == str(digest)
        assert r.header("Content-Length") == str(len(manifest))
        assert r.header("Content-Type") == DOCKER_MANIFEST


def test_head_of_a_blob_is_answered_from_metadata_without_a_download(mirror: Mirror) -> None:
    digest = mirror.scheduler.add(layer("metadata", 7000))
    r = mirror.client.head(f"/v2/{REPO}/blobs/{digest}?ns=docker.io")
    headers = [r.header(h) for h in ("Content-Length", "Docker-Content-Digest", "Content-Type")]
    assert (r.code, r.body, headers) == (200, b"", ["7000", str(digest), "application/octet-stream"])
    assert mirror.sizes.calls == [digest]
    assert mirror.scheduler.downloads == []


def test_a_blob_no_origin_has_is_a_fast_404_without_a_download(mirror: Mirror) -> None:
    missing = Digest.from_bytes(b"missing")
    for method in ("GET", "HEAD"):
        r = mirror.client.request(method, f"/v2/{REPO}/blobs/{missing}?ns=docker.io")
        assert r.code == 404
    assert mirror.client.get(f"/v2/{REPO}/blobs/{missing}").error_code == "BLOB_UNKNOWN"
    assert mirror.scheduler.downloads == []


def test_range_from_an_offset_is_206_with_content_range(mirror: Mirror) -> None:
    data = layer("offset", 5000)
    r = mirror.client.get(
        f"/v2/{REPO}/blobs/{mirror.scheduler.add(data)}?ns=docker.io", headers={"Range": "bytes=1200-"}
    )
    assert (r.code, r.header("Content-Range"), r.body) == (206, "bytes 1200-4999/5000", data[1200:])


# -- never strand a pull ------------------------------------------------------------------------------------------


def test_an_unknown_tag_is_a_fast_404_manifest_unknown_and_logged(mirror: Mirror) -> None:
    r = mirror.client.head(f"/v2/{REPO}/manifests/nope?ns=docker.io")
    assert r.code == 404
    r = mirror.client.get(f"/v2/{REPO}/manifests/nope?ns=docker.io")
    assert r.error_code == "MANIFEST_UNKNOWN"
    logged = [e for e in mirror.events if e.get("status") == 404]
    assert logged and logged[0]["namespace"] == "docker.io" and logged[0]["method"] == "HEAD"


def _assert_fall_back(r: Any) -> None:
    assert r.code == 503
    assert r.error_code == "UNKNOWN"
    assert "try its next registry host" in r.json()["errors"][0]["message"]


def test_a_silent_build_index_is_503_within_the_bound(mirror: Mirror, clock: task.Clock) -> None:
    mirror.tags.stalled = True
    r = mirror.client.head(f"/v2/{REPO}/manifests/3.19?ns=docker.io")
    assert r.code == 503
    assert clock.seconds() == pytest.approx(TIMEOUT)
    _assert_fall_back(mirror.client.get(f"/v2/{REPO}/manifests/3.19?ns=docker.io"))


def test_a_silent_tracker_is_503_for_blobs_and_manifests(mirror: Mirror) -> None:
    digest = mirror.scheduler.add(layer("silent"))
    mirror.sizes.stalled = True
    assert mirror.client.head(f"/v2/{REPO}/blobs/{digest}").code == 503
    _assert_fall_back(mirror.client.get(f"/v2/{REPO}/blobs/{digest}"))
    assert mirror.scheduler.downloads == []


def test_a_manifest_download_that_stalls_is_503(mirror: Mirror, tmp_path: Path) -> None:
    manifest = image(mirror.scheduler)
    mirror.tag(REPO, "slow", manifest)

    async def stalled(namespace: str, digest: Digest) -> str:
        await Deferred()
        raise AssertionError("never")

    mirror.scheduler.download = stalled  # type: ignore[method-assign]
    _assert_fall_back(mirror.client.get(f"/v2/{REPO}/manifests/slow", headers={"Accept": DOCKER_MANIFEST}))


@pytest.mark.parametrize("code", [401, 403, 500])
def test_an_upstream_error_is_never_relayed(mirror: Mirror, code: int) -> None:
    mirror.tags.failing = HTTPStatusError("GET", "http://build-index/tags", code, b"nope")
    _assert_fall_back(mirror.client.get(f"/v2/{REPO}/manifests/3.19"))
    mirror.sizes.failing = HTTPStatusError("GET", "http://tracker/metainfo", code, b"nope")
    _assert_fall_back(mirror.client.get(f"/v2/{REPO}/blobs/{Digest.from_bytes(b'x')}"))


class Streaming(Resource):
    """A response still being written (a blob)."""

    isLeaf = True

    def render(self, request: Any) -> Any:
        return NOT_DONE_YET


def test_a_client_that_closes_early_is_logged_at_debug_only() -> None:
    events: list[dict[str, Any]] = []
    resource = Namespaced(Streaming())
    resource.log = Logger(observer=events.append, namespace="test")
    request = DummyRequest([b""])
    request.args = {b"ns": [b"docker.io"]}
    request.path = b"/v2/library/alpine/blobs/sha256:00"
    assert resource.render(request) is NOT_DONE_YET
    request.processingFailed(Failure(ConnectionError("client went away")))
    assert [(e["log_level"].name, e["reason"]) for e in events] == [("debug", "client went away")]


# -- LocalOrTracker ---------------------------------------------------------------------------------------------


def test_sizes_come_from_the_cache_then_the_tracker() -> None:
    cached = {Digest.from_bytes(b"a"): 1}
    info = MetaInfo.from_bytes(b"b" * 10, 4)
    asked: list[Digest] = []

    async def stat(digest: Digest) -> int | None:
        return cached.get(digest)

    async def metainfo(namespace: str, digest: Digest) -> MetaInfo | None:
        asked.append(digest)
        return info if digest == info.digest else None

    sizes = LocalOrTracker(stat, metainfo)
    assert result_of(sizes("r", Digest.from_bytes(b"a"))) == 1
    assert asked == []
    assert result_of(sizes("r", info.digest)) == 10
    assert result_of(sizes("r", Digest.from_bytes(b"c"))) is None
