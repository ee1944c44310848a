"""The agent's read-only registry: ``RegistryAPI(read_only=True)`` over
``AgentSource``, with a fake scheduler and build-index behind StubTreq."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent_fakes import Client, FakeScheduler, FakeTags, image, layer
from twisted.internet import task

from kraken.agent.source import AgentSource
from kraken.agent.tap import READ_ONLY_MESSAGE
from kraken.core import Digest
from kraken.registry.http import RegistryAPI
from kraken.registry.manifests import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from kraken.workers import InlineWorker

REPO = "library/alpine"


class Agent:
    def __init__(self, tmp_path: Path, clock: task.Clock, max_manifest_size: int = 4 << 20) -> None:
        self.scheduler = FakeScheduler(tmp_path / "cache")
        self.tags = FakeTags()
        source = AgentSource(self.scheduler, self.tags, worker=InlineWorker(), max_manifest_size=max_manifest_size)
        api = RegistryAPI(
            source,
            None,
            clock=clock,
            read_only=True,
            read_only_message=READ_ONLY_MESSAGE,
            max_manifest_size=max_manifest_size,
        )
        self.client = Client(api.resource(), clock)

    def tag(self, repo: str, tag: str, manifest: bytes) -> Digest:
        digest = self.scheduler.add(manifest)
        self.tags.tags[(repo, tag)] = digest
        return digest


@pytest.fixture
def agent(tmp_path: Path, clock: task.Clock) -> Agent:
    return Agent(tmp_path, clock)


def test_base_endpoint(agent: Agent) -> None:
    r = agent.client.get("/v2/")
    assert r.code == 200
    assert r.header("Docker-Distribution-Api-Version") == "registry/2.0"


def test_pull_by_tag_downloads_the_manifest_through_the_scheduler(agent: Agent) -> None:
    manifest = image(agent.scheduler)
    digest = agent.tag(REPO, "3.19", manifest)
    r = agent.client.get(f"/v2/{REPO}/manifests/3.19", headers={"Accept": DOCKER_MANIFEST})
    assert r.code == 200, r.body
    assert r.body == manifest
    assert r.header("Content-Type") == DOCKER_MANIFEST
    assert r.header("Docker-Content-Digest") == str(digest)
    assert agent.tags.calls == [(REPO, "3.19")]
    assert (REPO, digest) in agent.scheduler.downloads


def test_pull_by_digest_and_then_every_blob(agent: Agent) -> None:
    manifest = image(agent.scheduler)
    digest = agent.scheduler.add(manifest)
    r = agent.client.get(f"/v2/{REPO}/manifests/{digest}")
    assert r.code == 200
    assert r.body == manifest
    assert agent.tags.calls == []
    doc = json.loads(manifest)
    for desc in [doc["config"], *doc["layers"]]:
        blob = agent.client.get(f"/v2/{REPO}/blobs/{desc['digest']}")
        assert blob.code == 200
        assert Digest.from_bytes(blob.body) == Digest.parse(desc["digest"])
        assert blob.header("Docker-Content-Digest") == desc["digest"]
    assert {ns for ns, _ in agent.scheduler.downloads} == {REPO}


def test_oci_manifest_without_media_type_is_served_as_oci(agent: Agent) -> None:
    manifest = image(agent.scheduler, oci=True, media_type_field=False)
    agent.tag(REPO, "oci", manifest)
    r = agent.client.get(f"/v2/{REPO}/manifests/oci", headers={"Accept": OCI_MANIFEST})
    assert r.code == 200
    assert r.header("Content-Type") == OCI_MANIFEST


def test_index_is_served(agent: Agent) -> None:
    child = image(agent.scheduler, oci=True)
    child_digest = agent.scheduler.add(child)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": str(child_digest), "size": len(child)}],
        }
    ).encode()
    agent.tag(REPO, "multi", index)
    r = agent.client.get(f"/v2/{REPO}/manifests/multi", headers={"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}"})
    assert r.code == 200
    assert r.header("Content-Type") == OCI_INDEX
    assert agent.client.get(f"/v2/{REPO}/manifests/{child_digest}").body == child


def test_head_manifest_has_length_and_no_body(agent: Agent) -> None:
    manifest = image(agent.scheduler)
    agent.tag(REPO, "v1", manifest)
    r = agent.client.head(f"/v2/{REPO}/manifests/v1")
    assert r.code == 200
    assert r.body == b""
    assert r.header("Content-Length") == str(len(manifest))


def test_unknown_tag_is_manifest_unknown(agent: Agent) -> None:
    r = agent.client.get(f"/v2/{REPO}/manifests/nope")
    assert r.code == 404
    assert r.error_code == "MANIFEST_UNKNOWN"
    assert agent.scheduler.downloads == []


def test_manifest_no_origin_has_is_manifest_unknown(agent: Agent) -> None:
    missing = Digest.from_bytes(b"never pushed")
    r = agent.client.get(f"/v2/{REPO}/manifests/{missing}")
    assert r.code == 404
    assert r.error_code == "MANIFEST_UNKNOWN"
    assert agent.scheduler.downloads == [(REPO, missing)]


def test_a_layer_asked_for_as_a_manifest_is_manifest_unknown(agent: Agent) -> None:
    digest = agent.scheduler.add(layer("not a manifest"))
    r = agent.client.get(f"/v2/{REPO}/manifests/{digest}")
    assert r.code == 404
    assert r.error_code == "MANIFEST_UNKNOWN"


def test_a_manifest_above_the_size_limit_is_manifest_unknown(tmp_path: Path, clock: task.Clock) -> None:
    agent = Agent(tmp_path, clock, max_manifest_size=100)
    agent.tag(REPO, "big", image(agent.scheduler))
    r = agent.client.get(f"/v2/{REPO}/manifests/big")
    assert r.code == 404
    assert r.error_code == "MANIFEST_UNKNOWN"


def test_blob_head_gives_the_size(agent: Agent) -> None:
    data = layer("head", 5000)
    digest = agent.scheduler.add(data)
    r = agent.client.head(f"/v2/{REPO}/blobs/{digest}")
    assert r.code == 200
    assert r.body == b""
    assert r.header("Content-Length") == "5000"
    assert r.header("Docker-Content-Digest") == str(digest)


def test_blob_range(agent: Agent) -> None:
    data = layer("range", 5000)
    digest = agent.scheduler.add(data)
    r = agent.client.get(f"/v2/{REPO}/blobs/{digest}", headers={"Range": "bytes=100-199"})
    assert r.code == 206
    assert r.body == data[100:200]
    assert r.header("Content-Range") == "bytes 100-199/5000"


def test_backwards_range_is_416(agent: Agent) -> None:
    digest = agent.scheduler.add(layer("backwards"))
    r = agent.client.get(f"/v2/{REPO}/blobs/{digest}", headers={"Range": "bytes=500-0"})
    assert r.code == 416


def test_blob_no_origin_has_is_blob_unknown(agent: Agent) -> None:
    missing = Digest.from_bytes(b"missing")
    for method in ("GET", "HEAD"):
        r = agent.client.request(method, f"/v2/{REPO}/blobs/{missing}")
        assert r.code == 404
        if method == "GET":
            assert r.error_code == "BLOB_UNKNOWN"


def test_failed_download_is_a_5xx(agent: Agent) -> None:
    digest = agent.scheduler.add(layer("stalls"))
    agent.scheduler.failing.add(digest)
    r = agent.client.get(f"/v2/{REPO}/blobs/{digest}")
    assert r.code == 502
    assert r.error_code == "UNKNOWN"
    assert "could not download" in r.json()["errors"][0]["message"]
    manifest_digest = agent.tag(REPO, "stalled", image(agent.scheduler))
    agent.scheduler.failing.add(manifest_digest)
    assert agent.client.get(f"/v2/{REPO}/manifests/stalled").code == 502


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", f"/v2/{REPO}/blobs/uploads/"),
        ("PATCH", f"/v2/{REPO}/blobs/uploads/some-uuid"),
        ("PUT", f"/v2/{REPO}/blobs/uploads/some-uuid?digest=sha256:{'0' * 64}"),
        ("PUT", f"/v2/{REPO}/manifests/latest"),
        ("DELETE", f"/v2/{REPO}/manifests/latest"),
        ("DELETE", f"/v2/{REPO}/blobs/sha256:{'0' * 64}"),
    ],
)
def test_pushes_are_unsupported_and_name_the_proxy(agent: Agent, method: str, path: str) -> None:
    r = agent.client.request(method, path, body=b"{}")
    assert r.code == 405
    assert r.error_code == "UNSUPPORTED"
    assert "push to the Kraken proxy" in r.json()["errors"][0]["message"]
    assert agent.scheduler.downloads == []


def test_bad_names_and_digests_are_refused_before_any_download(agent: Agent) -> None:
    assert agent.client.get("/v2/UPPER/manifests/v1").error_code == "NAME_INVALID"
    assert agent.client.get(f"/v2/{REPO}/blobs/sha256:nothex").error_code == "DIGEST_INVALID"
    assert agent.scheduler.downloads == []
