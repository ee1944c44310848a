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

from kraken.cli.image import write_layout

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


def test_an_agent_pulls_an_image_only_the_upstream_registry_has(
    herd_launcher: Any, docker_registry: DockerRegistry, tmp_path: Any
) -> None:
    layout = write_layout(
        str(tmp_path / "layout"), layers=2, random_layer_size="1MiB", seed=f"pull-through-{uuid.uuid4()}"
    )
    repo = f"upstream/image-{uuid.uuid4().hex[:8]}"
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--preserve-digests",
        f"oci:{layout.path}:v1",
        f"docker://{docker_registry.address}/{repo}:v1",
    )

    backends = upstream_backends(docker_registry)
    extra = {"origin": {"backends": backends}, "build_index": {"backends": backends}}
    herd = herd_launcher.start(str(tmp_path / "herd"), agents=1, extra=extra)
    pulled = str(tmp_path / "pulled")
    skopeo("copy", "--src-tls-verify=false", f"docker://{herd.agent_registry(0)}/{repo}:v1", f"dir:{pulled}")

    manifest, blobs = check_dir_copy(pulled)
    assert manifest == layout.read_blob(layout.manifest.digest)
    assert blobs == {layout.config.digest, *(layer.digest for layer in layout.layers)}
