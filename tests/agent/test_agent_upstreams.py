"""The agent as a P2P mirror of upstream registries (docs/operations.md section 16): a request whose ``?ns=``
matches ``upstream_namespaces`` is served from the repository ``<host>/<repo>`` the cluster reads upstream;
any other ``ns``, or none, is served by repository name alone as before.

The registry as ``kraken.agent.tap`` builds it (``Namespaced`` over ``RegistryAPI`` over ``AgentSource``), a fake
scheduler and build-index behind StubTreq."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agent_fakes import FakeScheduler, FakeTags, TickingClient, image
from twisted.internet import task
from twisted.web.test.requesthelper import DummyRequest

from kraken import config as kconfig
from kraken.agent.config import AgentConfig
from kraken.agent.mirror import Namespaced
from kraken.agent.source import AgentSource
from kraken.agent.tap import READ_ONLY_MESSAGE
from kraken.agent.upstreams import UpstreamNamespaces
from kraken.registry.http import RegistryAPI
from kraken.registry.manifests import DOCKER_MANIFEST
from kraken.workers import InlineWorker

PATTERNS = ("docker.io", "*.example.com", "127.0.0.1:*")


class Agent:
    def __init__(self, tmp_path: Path, clock: task.Clock, patterns: tuple[str, ...] = PATTERNS) -> None:
        self.scheduler = FakeScheduler(tmp_path / "cache")
        self.tags = FakeTags()
        source = AgentSource(self.scheduler, self.tags, worker=InlineWorker(), max_manifest_size=4 << 20)
        api = RegistryAPI(source, None, clock=clock, read_only=True, read_only_message=READ_ONLY_MESSAGE)
        self.client = TickingClient(Namespaced(api.resource(), UpstreamNamespaces(patterns)), clock)

    def tag(self, repo: str, tag: str) -> tuple[bytes, Any]:
        manifest = image(self.scheduler)
        self.tags.tags[(repo, tag)] = digest = self.scheduler.add(manifest)
        return manifest, digest


@pytest.fixture(name="agent")
def _agent(tmp_path: Path, clock: task.Clock) -> Agent:
    return Agent(tmp_path, clock)


def test_an_upstream_ns_is_served_from_the_namespaced_repository(agent: Agent) -> None:
    manifest, digest = agent.tag("docker.io/library/alpine", "3")
    r = agent.client.get("/v2/library/alpine/manifests/3?ns=docker.io", headers={"Accept": DOCKER_MANIFEST})
    assert (r.code, r.body, r.header("Docker-Content-Digest")) == (200, manifest, str(digest))
    assert r.header("OCI-Namespace") == "docker.io"
    assert agent.tags.calls == [("docker.io/library/alpine", "3")]
    assert set(agent.scheduler.downloads) == {("docker.io/library/alpine", digest)}


@pytest.mark.parametrize(
    ("ns", "repo"),
    [
        ("Docker.IO", "docker.io/library/alpine"),
        ("registry.example.com", "registry.example.com/library/alpine"),
        ("127.0.0.1:5000", "127.0.0.1_5000/library/alpine"),
    ],
)
def test_patterns_and_ports(agent: Agent, ns: str, repo: str) -> None:
    agent.tag(repo, "3")
    r = agent.client.head(f"/v2/library/alpine/manifests/3?ns={ns}", headers={"Accept": DOCKER_MANIFEST})
    assert r.code == 200
    assert agent.tags.calls == [(repo, "3")]


@pytest.mark.parametrize("query", ["", "?ns=ghcr.io", "?ns=example.com", "?ns=[::1]:5000"])
def test_other_namespaces_are_served_by_repository_name_as_before(agent: Agent, query: str) -> None:
    manifest, _ = agent.tag("library/alpine", "3")
    r = agent.client.get(f"/v2/library/alpine/manifests/3{query}", headers={"Accept": DOCKER_MANIFEST})
    assert (r.code, r.body) == (200, manifest)
    assert agent.tags.calls == [("library/alpine", "3")]


def test_an_image_the_upstream_lacks_is_a_fast_404(agent: Agent) -> None:
    agent.tag("library/alpine", "3")  # pushed to our proxy, but docker.io is mirrored: not this one
    r = agent.client.get("/v2/library/alpine/manifests/3?ns=docker.io")
    assert (r.code, r.error_code) == (404, "MANIFEST_UNKNOWN")


def test_routes_outside_a_repository_are_left_alone(agent: Agent) -> None:
    assert agent.client.get("/v2/?ns=docker.io").code == 200


def test_without_patterns_nothing_is_rewritten(tmp_path: Path, clock: task.Clock) -> None:
    agent = Agent(tmp_path, clock, patterns=())
    agent.tag("library/alpine", "3")
    assert agent.client.head("/v2/library/alpine/manifests/3?ns=docker.io").code == 200
    assert agent.tags.calls == [("library/alpine", "3")]


def test_the_rewrite_moves_path_and_postpath() -> None:
    request = DummyRequest([b"v2", b"library", b"alpine", b"blobs", b"sha256:ab"])
    request.path = b"/v2/library/alpine/blobs/sha256:ab"
    assert UpstreamNamespaces(["docker.io"]).rewrite(request, "docker.io") == "docker.io"
    assert request.path == b"/v2/docker.io/library/alpine/blobs/sha256:ab"
    assert request.postpath == [b"v2", b"docker.io", b"library", b"alpine", b"blobs", b"sha256:ab"]


def test_a_bad_pattern_is_a_config_error_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text('upstream_namespaces: ["docker.io", "bad/host"]\n')
    with pytest.raises(kconfig.ConfigError) as caught:
        kconfig.build(AgentConfig, kconfig.load(str(path)))
    assert "agent.yaml" in str(caught.value) and "upstream_namespaces" in str(caught.value)
    assert "'bad/host' is not a registry host pattern" in str(caught.value)


def test_the_default_mirrors_nothing() -> None:
    assert AgentConfig().upstream_namespaces == ()
    assert not UpstreamNamespaces(())
