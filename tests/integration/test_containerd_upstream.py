"""The agent as a P2P mirror of an upstream registry (docs/operations.md section 16), with a real containerd
(``ctr images pull --hosts-dir``) and a real docker-registry as the upstream.

The image is pushed to docker-registry only. containerd's hosts.toml for that registry names an agent first and
docker-registry as ``server``; the herd's agents have ``upstream_namespaces: ["127.0.0.1:*"]``, so containerd's
``?ns=127.0.0.1:<port>`` makes them serve the repository ``127.0.0.1_<port>/<repo>``, which the origin and the
build-index read from docker-registry (a ``registry`` backend with ``ns_prefix: true``). The image is pulled
through agent 0, removed from containerd, then pulled through agent 1. docker-registry's own log shows what
it served: each blob and the manifest once, to the origin, and nothing to containerd (which never fell back).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from servers import DockerRegistry, running_docker_registry

from kraken.backends.upstream import host_component
from kraken.cli.image import Layout

from . import test_containerd
from ._tools import run_process
from .containerd import Containerd, MirrorHost, containerd_fixture, write_hosts  # noqa: F401 (a fixture)

# docker-registry's access log line for each request it answered: method, path, status, user agent.
_SERVED = re.compile(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" ([0-9]{3}) \S+ "[^"]*" "([^"]*)"')


@pytest.fixture
def docker_registry(tmp_path: Any) -> Iterator[DockerRegistry]:
    with running_docker_registry(str(tmp_path / "registry")) as registry:
        yield registry


def upstream_herd(herd_launcher: Any, registry: DockerRegistry, base: str, agents: int = 2) -> Any:
    """A herd whose agents mirror every ``127.0.0.1:<port>`` registry through the cluster, and whose origin
    and build-index read ``<registry host>/...`` repositories from ``registry``."""
    component = host_component(registry.address)
    assert component is not None
    backends = [
        {
            "namespace": re.escape(component) + "/.+",
            "registry": {
                "address": registry.url,
                "ns_prefix": True,
                "tag_ttl": "1m",
                "http_client": {"connect_timeout": "2s", "timeout": "10s", "retries": 1},
            },
        }
    ]
    extra = {
        "origin": {"backends": backends},
        "build_index": {"backends": backends},
        "agent": {"upstream_namespaces": ["127.0.0.1:*"]},
    }
    return herd_launcher.start(base, agents=agents, extra=extra)


def served(registry: DockerRegistry, start: int = 0) -> Counter[tuple[str, str, str]]:
    """(method, path, client) of every request docker-registry answered 200 from log line ``start`` on; the
    client is ``containerd`` or ``kraken`` (anything else: the origin and build-index send no user agent)."""
    seen: Counter[tuple[str, str, str]] = Counter()
    for line in registry.output.snapshot(start):
        m = _SERVED.search(line)
        if m and m.group(3) == "200":
            method, uri, _, agent = m.groups()
            seen[(method, uri.split("?")[0], "containerd" if "containerd" in agent else "kraken")] += 1
    return seen


def _blob_gets(registry: DockerRegistry, repo: str, layout: Layout) -> int:
    """How many lines docker-registry logged for the GETs of the image's blobs by its manifest."""
    paths = {f"/v2/{repo}/blobs/{d}" for d in (layout.config.digest, *(layer.digest for layer in layout.layers))}
    return sum(n for (method, path, _), n in served(registry).items() if method == "GET" and path in paths)


@pytest_twisted.ensureDeferred
async def test_an_upstream_image_goes_through_the_origin_once_then_peer_to_peer(
    herd_launcher: Any, docker_registry: DockerRegistry, containerd: Containerd, reactor: Any, tmp_path: Any
) -> None:
    layout, name = test_containerd._layout(tmp_path, "upstream")
    repo = f"library/{name.rpartition('/')[2]}"
    argv = ["skopeo", "copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{layout.path}:v1"]
    code, _out, err = await run_process(reactor, [*argv, f"docker://{docker_registry.address}/{repo}:v1"])
    assert code == 0, err.decode(errors="replace")[-4000:]
    herd = upstream_herd(herd_launcher, docker_registry, str(tmp_path / "herd"))
    image = f"{docker_registry.address}/{repo}:v1"
    start = docker_registry.output.count()

    def through(k: int) -> str:  # a hosts.toml naming agent k, then docker-registry as server
        agent = MirrorHost(f"http://{herd.agent_registry(k)}")
        return write_hosts(str(tmp_path / f"agent-{k}"), docker_registry.address, [agent], server=docker_registry.url)

    await test_containerd._pulled(containerd, through(0), image, layout)
    # Each of the image's three blobs went upstream -> origin once; wait for docker-registry's log lines.
    assert docker_registry.output.wait_for(lambda _: _blob_gets(docker_registry, repo, layout) >= 3, start)

    (await containerd.ctr("images", "rm", "--sync", image)).check()
    assert not {layout.manifest.digest, *(layer.digest for layer in layout.layers)} & await containerd.content_digests()
    await test_containerd._pulled(containerd, through(1), image, layout)

    seen = served(docker_registry, start)
    assert not [key for key in seen if key[2] == "containerd"], seen  # containerd never fell back to the server
    blobs = [layout.manifest.digest, layout.config.digest, *(layer.digest for layer in layout.layers)]
    gets = {d: sum(n for (m, path, _), n in seen.items() if m == "GET" and path.endswith(f"/{d}")) for d in blobs}
    assert gets == dict.fromkeys(blobs, 1), seen  # upstream -> origin once; agent 1 got them from peers
    namespaced = f"{host_component(docker_registry.address)}/{repo}"  # what the agents asked the cluster for
    assert any(f"GET /repositories/{namespaced}/tags/v1 " in line for line in herd.log_lines())
