"""The first host of an upstream image gets its bytes while the origin still fetches them (``stream_from_origins``,
docs/operations.md section 16), with a real containerd and a real docker-registry as the upstream.

Between the origin and docker-registry sits a gate (``Gate``, a TCP relay in this process): it passes the first
``HOLD_AFTER`` bytes docker-registry sends on a connection and holds the rest until the test opens it. Only the
layer's body (4 MiB) is that long, so the origin's fetch of the layer cannot end while the gate is shut: the agent's
log line that its stream from the origin began, seen while the gate is shut, came before the origin's commit (its
"committed" line, which the test then sees after it). A second test overwrites the layer in docker-registry's
storage with other bytes of the same length: the origin's commit refuses them, the agent installs nothing, and the
pull fails (containerd's fallback to docker-registry gets the same wrong bytes).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from servers import DockerRegistry, running_docker_registry
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.protocols import portforward

from kraken.backends.upstream import host_component
from kraken.cli.image import Layout, write_layout
from kraken.core import Digest

from ._tools import run_process
from .containerd import Containerd, MirrorHost, containerd_fixture, write_hosts  # noqa: F401 (a fixture)

HOLD_AFTER = 2 << 20


class Gate:
    """Holds what the server sends past ``HOLD_AFTER`` bytes of a connection until ``open``."""

    def __init__(self) -> None:
        self.is_open = False
        self.held: list[tuple[Any, bytes]] = []

    def open(self) -> None:
        self.is_open = True
        held, self.held = self.held, []
        for proto, data in held:
            proto.peer.transport.write(data)
            proto.transport.resumeProducing()


class _GatedClient(portforward.ProxyClient):
    sent = 0

    def dataReceived(self, data: bytes) -> None:
        gate: Gate = self.peer.factory.gate
        if gate.is_open or self.sent + len(data) <= HOLD_AFTER:
            self.sent += len(data)
            self.peer.transport.write(data)
            return
        keep = max(HOLD_AFTER - self.sent, 0)
        if keep:
            self.peer.transport.write(data[:keep])
        self.sent += len(data)
        gate.held.append((self, data[keep:]))
        self.transport.pauseProducing()


class _GatedClientFactory(portforward.ProxyClientFactory):
    protocol = _GatedClient


class _GatedServer(portforward.ProxyServer):
    clientProtocolFactory = _GatedClientFactory


async def gated_relay(reactor: Any, registry: DockerRegistry) -> tuple[Gate, str]:
    """A relay to ``registry`` on a free port, and its gate (shut); returns the gate and the relay's base URL."""
    host, port = registry.address.rsplit(":", 1)
    factory = portforward.ProxyFactory(host, int(port))
    factory.protocol = _GatedServer
    factory.gate = Gate()  # type: ignore[attr-defined]
    listener = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    return factory.gate, f"http://127.0.0.1:{listener.getHost().port}"  # type: ignore[attr-defined]


@pytest.fixture
def docker_registry(tmp_path: Any) -> Iterator[DockerRegistry]:
    with running_docker_registry(str(tmp_path / "registry")) as registry:
        yield registry


def streaming_herd(herd_launcher: Any, registry: DockerRegistry, upstream_url: str, base: str) -> Any:
    """Agents mirroring ``127.0.0.1:*`` through the cluster and streaming from the origin; the origin and the
    build-index read ``<registry host>/...`` repositories from ``upstream_url``."""
    component = host_component(registry.address)
    assert component is not None
    entry = {"address": upstream_url, "ns_prefix": True, "tag_ttl": "1m",
             "http_client": {"connect_timeout": "2s", "timeout": "20s", "retries": 0}}  # fmt: skip
    backends = [{"namespace": re.escape(component) + "/.+", "registry": entry}]
    ports = herd_launcher.free_ports(1)
    extra = {
        "origin": {"backends": backends},
        "build_index": {"backends": backends},
        "agent": {"upstream_namespaces": ["127.0.0.1:*"], "stream_from_origins": f"http://127.0.0.1:{ports.origin}"},
    }
    return herd_launcher.start(base, ports, agents=1, extra=extra)


async def pushed(reactor: Any, tmp_path: Any, registry: DockerRegistry, name: str) -> tuple[Layout, str]:
    """An image of one 4 MiB layer pushed to ``registry`` only; its layout and the image reference."""
    layout = write_layout(str(tmp_path / "layout"), layers=1, random_layer_size="4MiB", seed=f"{name}-{tmp_path}")
    repo = f"library/{name}"
    argv = ["skopeo", "copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{layout.path}:v1"]
    code, _out, err = await run_process(reactor, [*argv, f"docker://{registry.address}/{repo}:v1"])
    assert code == 0, err.decode(errors="replace")[-4000:]
    return layout, f"{registry.address}/{repo}:v1"


def _through_agent(herd: Any, tmp_path: Any, registry: DockerRegistry) -> str:
    agent = MirrorHost(f"http://{herd.agent_registry(0)}")
    return write_hosts(str(tmp_path / "hosts"), registry.address, [agent], server=registry.url)


def _line_with(herd: Any, *words: str, start: int = 0) -> int | None:
    for i, line in enumerate(herd.log_lines(start)):
        if all(w in line for w in words):
            return start + i
    return None


@pytest_twisted.ensureDeferred
async def test_the_first_host_streams_the_layer_before_the_origin_has_fetched_it(
    herd_launcher: Any, docker_registry: DockerRegistry, containerd: Containerd, reactor: Any, tmp_path: Any
) -> None:
    layout, image = await pushed(reactor, tmp_path, docker_registry, "streamed")
    gate, relay = await gated_relay(reactor, docker_registry)
    herd = streaming_herd(herd_launcher, docker_registry, relay, str(tmp_path / "herd"))
    layer = layout.layers[0].digest
    start = len(herd.log_lines())

    hosts = _through_agent(herd, tmp_path, docker_registry)
    pull = Deferred.fromCoroutine(containerd.ctr("images", "pull", "--hosts-dir", hosts, image))
    began = await threads.deferToThread(
        herd.wait_for_lines, lambda line: f"streaming {layer} from its origin while it fetches it" in line, start
    )
    assert began, herd.log_lines(start)[-40:]
    assert _line_with(herd, f"fetched {layer} from its backend", "(committed)", start=start) is None
    gate.open()
    (await pull).check()
    assert await containerd.image_digest(image) == layout.manifest.digest
    assert layer in await containerd.content_digests()

    assert herd.wait_for_lines(lambda line: f"streamed {layer} from its origin; installed" in line, start)
    streamed = _line_with(herd, f"streaming {layer} from its origin while it fetches it", start=start)
    committed = _line_with(herd, f"fetched {layer} from its backend", "(committed)", start=start)
    assert streamed is not None and committed is not None and streamed < committed
    assert _cached(herd, "agent-0", layer)


@pytest_twisted.ensureDeferred
async def test_a_corrupt_upstream_layer_is_never_installed_and_the_pull_fails(
    herd_launcher: Any, docker_registry: DockerRegistry, containerd: Containerd, reactor: Any, tmp_path: Any
) -> None:
    layout, image = await pushed(reactor, tmp_path, docker_registry, "corrupt")
    layer = layout.layers[0].digest
    _corrupt(str(tmp_path / "registry"), layer)
    herd = streaming_herd(herd_launcher, docker_registry, docker_registry.url, str(tmp_path / "herd"))
    start = len(herd.log_lines())

    hosts = _through_agent(herd, tmp_path, docker_registry)
    result = await containerd.ctr("images", "pull", "--hosts-dir", hosts, image)
    assert result.code != 0
    assert herd.wait_for_lines(lambda line: f"backend sent a wrong blob for {layer}" in line, start)
    for store in ("agent-0", "origin"):
        assert not _cached(herd, store, layer), store
    assert layer not in await containerd.content_digests()


def _cached(herd: Any, store: str, digest: str) -> bool:
    """Whether ``store`` (``origin``, ``agent-k``) of the herd holds ``digest`` in its cache."""
    parsed = Digest.parse(digest)
    return os.path.exists(os.path.join(herd.state_dir, store, "cache", *parsed.shard, parsed.hex, "data"))


def _corrupt(work_dir: str, digest: str) -> None:
    """Overwrite the last bytes of blob ``digest`` in docker-registry's storage: other bytes, the same length."""
    hex_ = Digest.parse(digest).hex
    data = os.path.join(work_dir, "data", "docker", "registry", "v2", "blobs", "sha256", hex_[:2], hex_, "data")
    with open(data, "r+b") as f:
        f.seek(-16, os.SEEK_END)
        f.write(b"\x00not the layer!\x00")
