"""Pull-through: an agent serves an image that only an upstream registry (Debian's docker-registry) holds.

The image is pushed with skopeo straight to docker-registry, never to the herd. The herd's origin has a
``registry`` backend for the namespace (it fetches blobs on miss from the upstream) and so has its build-index
(it resolves a tag it lacks through the upstream's manifest endpoint). skopeo then copies the image from an
agent's registry: tag, manifest and every layer travel upstream -> origin -> P2P -> agent, digests intact.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from servers import DockerRegistry, running_docker_registry

from kraken.cli.image import Layout, write_layout

from ._tools import check_dir_copy, skopeo

NAMESPACE = "upstream/.*"


@pytest.fixture
def docker_registry(tmp_path: Any) -> Iterator[DockerRegistry]:
    with running_docker_registry(str(tmp_path / "registry")) as registry:
        yield registry


def upstream_backends(registry: DockerRegistry) -> list[dict[str, Any]]:
    return [
        {
            "namespace": NAMESPACE,
            "registry": {
                "address": registry.address,
                "tls": False,
                "http_client": {"connect_timeout": "2s", "timeout": "10s", "retries": 1},
            },
        }
    ]


def push_upstream(registry: DockerRegistry, layout_path: str, repo: str) -> None:
    """Copy the layout's ``v1`` to ``repo:v1`` on the upstream registry, digests intact."""
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--preserve-digests",
        f"oci:{layout_path}:v1",
        f"docker://{registry.address}/{repo}:v1",
    )


def upstream_herd(herd_launcher: Any, registry: DockerRegistry, base: str, agents: int = 1) -> Any:
    """A herd whose origin and build-index read ``upstream/...`` from ``registry`` on a miss."""
    backends = upstream_backends(registry)
    extra = {"origin": {"backends": backends}, "build_index": {"backends": backends}}
    return herd_launcher.start(base, agents=agents, extra=extra)


def upstream_image(
    herd_launcher: Any, registry: DockerRegistry, tmp_path: Any, name: str, layers: int, layer_size: str
) -> tuple[Layout, str, Any]:
    """A new image ``upstream/<name>-<random>:v1`` only ``registry`` holds, and a herd reading it on a miss."""
    path = str(tmp_path / "layout")
    layout = write_layout(path, layers=layers, random_layer_size=layer_size, seed=f"{name}-{uuid.uuid4()}")
    repo = f"upstream/{name}-{uuid.uuid4().hex[:8]}"
    push_upstream(registry, layout.path, repo)
    return layout, repo, upstream_herd(herd_launcher, registry, str(tmp_path / "herd"))


def test_an_agent_pulls_an_image_only_the_upstream_registry_has(
    herd_launcher: Any, docker_registry: DockerRegistry, tmp_path: Any
) -> None:
    layout, repo, herd = upstream_image(herd_launcher, docker_registry, tmp_path, "image", 2, "1MiB")
    pulled = str(tmp_path / "pulled")
    skopeo("copy", "--src-tls-verify=false", f"docker://{herd.agent_registry(0)}/{repo}:v1", f"dir:{pulled}")

    manifest, blobs = check_dir_copy(pulled)
    assert manifest == layout.read_blob(layout.manifest.digest)
    assert blobs == {layout.config.digest, *(layer.digest for layer in layout.layers)}
