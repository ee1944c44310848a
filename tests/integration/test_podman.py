"""podman pulls through an agent configured as a mirror in ``registries.conf`` (testbed §5: a puller only, vfs
storage, its root in the test's directory and its run root in a short one of its own: podman refuses a run root
longer than 50 characters, which pytest's directories under /tmp/pytest-of-<user>/ are).

The image is pushed to the proxy with skopeo, then pulled by podman under a registry name that does not exist
(``origin.invalid``): ``registries.conf`` lists the agent as that registry's mirror, so the pull can only succeed
through the agent. podman's image digest is the pushed manifest's, and the agent's counters show the layers came
through its scheduler. Synchronous: the herd is another process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from ._tools import get_json, push_new_image

PODMAN_TIMEOUT = 300


@pytest.fixture
def runroot() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="kraken-podman-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def podman(tmp_path: Any, runroot: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = [
        "podman", "--root", str(tmp_path / "storage"), "--runroot", runroot, "--storage-driver", "vfs",
        "--cgroup-manager", "cgroupfs", "--events-backend", "file", *args,
    ]  # fmt: skip
    env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(tmp_path / "registries.conf")}
    proc = subprocess.run(command, capture_output=True, timeout=PODMAN_TIMEOUT, env=env)
    assert proc.returncode == 0, (
        f"podman {' '.join(args)} exited {proc.returncode}\nstderr: {proc.stderr.decode(errors='replace')[-5000:]}"
    )
    return proc


def test_podman_pulls_through_an_agent_mirror(herd: Any, tmp_path: Any, runroot: str) -> None:
    layout, repo = push_new_image(herd.registry, str(tmp_path / "layout"), "podman", layers=2, layer_size="3MiB")
    (tmp_path / "registries.conf").write_text(
        "[[registry]]\n"
        'location = "origin.invalid"\n'
        "[[registry.mirror]]\n"
        f'location = "{herd.agent_registry(1)}"\n'
        "insecure = true\n"
    )
    before = get_json(f"{herd.agent_api(1)}/stats")

    podman(tmp_path, runroot, "pull", f"origin.invalid/{repo}:v1")

    [image] = json.loads(podman(tmp_path, runroot, "images", "--digests", "--format", "json").stdout)
    assert image["Digest"] == layout.manifest.digest
    after = get_json(f"{herd.agent_api(1)}/stats")
    layers = sum(layer.size for layer in layout.layers)
    assert after["bytes_in"] - before["bytes_in"] >= layers  # the layers came through the agent's scheduler
