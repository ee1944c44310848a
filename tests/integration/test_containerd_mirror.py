"""The agent as a containerd mirror (docs/operations.md section 16), with a real containerd (``ctr images pull
--hosts-dir``) and real registries.

1. A ``_default`` hosts.toml sends every registry through the agent, ``server`` unreachable: an image pushed to
   our proxy is pulled through the agent alone (containerd adds ``?ns=kraken.invalid`` to every request).
2. An image the agent cannot serve, held by a real docker-registry configured as ``server``: the agent answers
   a fast 404 (logged), containerd falls back to docker-registry and the pull succeeds.
3. The agent's tracker and build-index out of reach (a port that refuses, or one that accepts and never
   answers): the agent answers 503 within ``answer_timeout`` and containerd completes through ``server``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from servers import DockerRegistry, running_docker_registry
from twisted.internet.protocol import Factory, Protocol

from kraken.cli.image import Layout

from . import test_containerd
from ._tools import run_process
from .containerd import Containerd, MirrorHost, containerd_fixture, write_hosts  # noqa: F401 (a fixture)

REGISTRY = "kraken.invalid"  # a registry that never resolves
UNREACHABLE = "127.0.0.1:1"  # nothing listens there


@pytest.fixture
def docker_registry(tmp_path: Any) -> Iterator[DockerRegistry]:
    with running_docker_registry(str(tmp_path / "registry")) as registry:
        yield registry


async def _skopeo_copy(reactor: Any, layout: Layout, destination: str) -> None:
    argv = ["skopeo", "copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{layout.path}:v1", destination]
    code, _out, err = await run_process(reactor, argv)
    assert code == 0, f"{' '.join(argv)} exited {code}:\n{err.decode(errors='replace')[-4000:]}"


_layout = test_containerd._layout  # an OCI layout of 2 random 1 MiB layers, and a fresh repository name
_pulled = test_containerd._pulled  # ctr images pull succeeds and containerd holds every blob of the layout


@pytest_twisted.ensureDeferred
async def test_a_default_hosts_toml_pulls_through_the_agent_alone(
    herd_launcher: Any, containerd: Containerd, reactor: Any, tmp_path: Any
) -> None:
    herd = herd_launcher.start(str(tmp_path / "herd"), agents=1)
    layout, repo = _layout(tmp_path, "default")
    await _skopeo_copy(reactor, layout, f"docker://{herd.registry}/{repo}:v1")
    agent = MirrorHost(f"http://{herd.agent_registry(0)}")
    hosts = write_hosts(str(tmp_path / "certs.d"), "_default", [agent], server=f"http://{UNREACHABLE}")
    await _pulled(containerd, hosts, f"{REGISTRY}/{repo}:v1", layout)


@pytest_twisted.ensureDeferred
async def test_an_image_the_agent_cannot_serve_falls_back_to_the_server(
    herd_launcher: Any, docker_registry: DockerRegistry, containerd: Containerd, reactor: Any, tmp_path: Any
) -> None:
    herd = herd_launcher.start(str(tmp_path / "herd"), agents=1)
    layout, repo = _layout(tmp_path, "fallback")
    await _skopeo_copy(reactor, layout, f"docker://{docker_registry.address}/{repo}:v1")
    agent = MirrorHost(f"http://{herd.agent_registry(0)}")
    hosts = write_hosts(str(tmp_path / "certs.d"), docker_registry.address, [agent], server=docker_registry.url)
    start = len(herd.log_lines())
    await _pulled(containerd, hosts, f"{docker_registry.address}/{repo}:v1", layout)
    miss = f"answered 404 to HEAD /v2/{repo}/manifests/v1 for {docker_registry.address}"
    assert any(miss in line for line in herd.log_lines(start)), "\n".join(herd.log_lines(start)[-40:])


class _Silent(Protocol):
    """Accepts a connection and never answers: a tracker or build-index that stalls."""


@pytest.mark.parametrize("upstream", ["refused", "silent"])
@pytest_twisted.ensureDeferred
async def test_without_tracker_and_build_index_containerd_completes_through_the_server(
    herd_launcher: Any,
    docker_registry: DockerRegistry,
    containerd: Containerd,
    reactor: Any,
    tmp_path: Any,
    upstream: str,
) -> None:
    silent = reactor.listenTCP(0, Factory.forProtocol(_Silent), interface="127.0.0.1")
    try:
        url = f"http://{UNREACHABLE}" if upstream == "refused" else f"http://127.0.0.1:{silent.getHost().port}"
        extra = {"agent": {"tracker": url, "build_index": url, "answer_timeout": "1s"}}
        herd = herd_launcher.start(str(tmp_path / "herd"), agents=1, extra=extra)
        layout, repo = _layout(tmp_path, f"no-index-{upstream}")
        await _skopeo_copy(reactor, layout, f"docker://{docker_registry.address}/{repo}:v1")
        agent = MirrorHost(f"http://{herd.agent_registry(0)}")
        hosts = write_hosts(str(tmp_path / "certs.d"), "_default", [agent], server=docker_registry.url)
        start = len(herd.log_lines())
        await _pulled(containerd, hosts, f"{docker_registry.address}/{repo}:v1", layout)
        answered = [line for line in herd.log_lines(start) if "answered 503 to HEAD" in line]
        assert answered, "\n".join(herd.log_lines(start)[-40:])
        herd_launcher.stop(herd)
    finally:
        await silent.stopListening()
