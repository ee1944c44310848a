"""Pull through the agents: skopeo pushes to the proxy once, then pulls from three agents at once.

The session herd caps its origin's P2P egress (tests/conftest.py), so the agents finish sooner by trading pieces
among themselves than by each fetching every piece from the origin; the counters of the agents and of the origin
show that they did.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
import uuid
from typing import Any

from kraken.cli.image import write_layout

from ._tools import SKOPEO_TIMEOUT, check_dir_copy, skopeo

AGENTS = 3


def stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as response:
        return json.loads(response.read())


def test_three_agents_pull_at_once_and_trade_pieces(herd: Any, tmp_path: Any) -> None:
    layout = write_layout(str(tmp_path / "layout"), layers=2, random_layer_size="32MiB", seed=f"p2p-{uuid.uuid4()}")
    repo = f"integration/p2p-{uuid.uuid4().hex[:8]}"
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--preserve-digests",
        f"oci:{layout.path}:v1",
        f"docker://{herd.registry}/{repo}:v1",
    )
    before = [stats(herd.agent_api(k)) for k in range(AGENTS)]
    origin_before = stats(herd.origin_url)

    pulls = [
        subprocess.Popen(
            ["skopeo", "copy", "--src-tls-verify=false", f"docker://{herd.agent_registry(k)}/{repo}:v1",
             f"dir:{tmp_path / f'agent-{k}'}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for k in range(AGENTS)
    ]  # fmt: skip
    for k, pull in enumerate(pulls):
        _, err = pull.communicate(timeout=SKOPEO_TIMEOUT)
        assert pull.returncode == 0, f"pull from agent {k}: {err.decode(errors='replace')[-3000:]}"

    manifest = layout.read_blob(layout.manifest.digest)
    expected = {layout.config.digest, *(layer.digest for layer in layout.layers)}
    for k in range(AGENTS):
        pulled_manifest, blobs = check_dir_copy(str(tmp_path / f"agent-{k}"))
        assert pulled_manifest == manifest
        assert blobs == expected

    after = [stats(herd.agent_api(k)) for k in range(AGENTS)]
    origin_after = stats(herd.origin_url)
    delta = [{key: a[key] - b[key] for key in a} for a, b in zip(after, before, strict=True)]
    total = sum(blob.size for blob in (layout.manifest, layout.config, *layout.layers))
    # Every agent got the whole image (manifest, config and layers) through the scheduler ...
    assert all(d["bytes_in"] == total for d in delta), delta
    # ... partly from each other: pieces went between agents, and the origin sent fewer than three copies.
    assert sum(d["pieces_in_from_agents"] for d in delta) > 0, delta
    assert sum(d["pieces_out"] for d in delta) > 0, delta
    origin_sent = origin_after["bytes_out"] - origin_before["bytes_out"]
    assert origin_sent < AGENTS * total, (origin_sent, total)
