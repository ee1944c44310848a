"""Preheat through a real herd: Harbor's Kraken provider calls the proxy, and the origin fetches every blob of
an image that only its backend (Debian's docker-registry) holds, before any agent asks for it.

The request is what Harbor's provider sends (``GET /health``, then one ``POST /registry/notifications`` with a
schema 2 media type and an empty digest: a preheat by tag), sent with urllib. The test waits for the proxy's
"preheat ... done" log line (bounded by the herd's line watch, no sleeps), finds every blob in the origin's
store on disk, and then pulls the image through an agent with skopeo.
"""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from servers import DockerRegistry, running_docker_registry

from kraken.core import Digest

from ._tools import check_dir_copy, skopeo
from .test_pull_through import upstream_image


@pytest.fixture
def docker_registry(tmp_path: Any) -> Iterator[DockerRegistry]:
    with running_docker_registry(str(tmp_path / "registry")) as registry:
        yield registry


def harbor_preheat(proxy_url: str, repository: str, tag: str) -> tuple[int, Any]:
    with urllib.request.urlopen(proxy_url + "/health", timeout=30) as health:
        assert health.status == 200
    envelope = {
        "events": [{
            "id": str(uuid.uuid4()),
            "timestamp": "2026-12-07T13:30:00Z",
            "action": "push",
            "target": {
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": "",
                "repository": repository,
                "url": f"https://harbor.example.com/v2/{repository}/manifests/{tag}",
                "tag": tag,
            },
        }]
    }  # fmt: skip
    request = urllib.request.Request(
        proxy_url + "/registry/notifications",
        data=json.dumps(envelope).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def stored(state_dir: str, daemon: str, digest: str) -> bool:
    h = Digest.parse(digest).hex
    return os.path.isfile(os.path.join(state_dir, daemon, "cache", h[:2], h[2:4], h, "data"))


def test_a_harbor_preheat_puts_every_blob_on_the_origin_before_the_first_pull(
    herd_launcher: Any,
    docker_registry: DockerRegistry,
    tmp_path: Any,
) -> None:
    layout, repo, herd = upstream_image(herd_launcher, docker_registry, tmp_path, "preheat", 3, "512KiB")
    blobs = [layout.manifest.digest, layout.config.digest, *(layer.digest for layer in layout.layers)]
    assert not any(stored(herd.state_dir, "origin", d) for d in blobs)
    start = len(herd.log_lines())

    code, answer = harbor_preheat(herd.url, repo, "v1")
    assert (code, answer) == (200, {"queued": [{"repository": repo, "tag": "v1"}], "ignored": 0})
    done = f"preheat of {repo}@{layout.manifest.digest} done"
    seen: list[str] = []

    def finished(line: str) -> bool:
        if "preheat of" in line:
            seen.append(line)
        return bool(seen)

    assert herd.wait_for_lines(finished, start), "no preheat line in the log:\n" + "\n".join(
        herd.log_lines(start)[-40:]
    )
    assert done in seen[0], seen[0]
    assert all(stored(herd.state_dir, "origin", d) for d in blobs)
    assert not any(stored(herd.state_dir, "agent-0", d) for d in blobs)

    pulled = str(tmp_path / "pulled")
    skopeo("copy", "--src-tls-verify=false", f"docker://{herd.agent_registry(0)}/{repo}:v1", f"dir:{pulled}")
    manifest, copied = check_dir_copy(pulled)
    assert manifest == layout.read_blob(layout.manifest.digest)
    assert copied == {layout.config.digest, *(layer.digest for layer in layout.layers)}
