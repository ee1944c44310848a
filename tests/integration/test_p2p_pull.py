"""Pull through the agents: skopeo pushes to the proxy once, then pulls from three agents at once.

The session herds cap their origin's P2P egress (tests/conftest.py, tests/integration/conftest.py), so the agents
finish sooner by trading pieces among themselves than by each fetching every piece from the origin; the counters
of the agents and of the origin show that they did. It runs twice (``target``): against the plain herd, and
against ``kraken-herd --secure``, whose P2P listeners speak mutual TLS only (checked at its start), so there the
pieces the agents traded went over TLS.
"""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

from kraken.cli.image import write_layout

from ._tools import SKOPEO_TIMEOUT, Target, check_dir_copy, skopeo

AGENTS = 3


def test_three_agents_pull_at_once_and_trade_pieces(target: Target, tmp_path: Any) -> None:
    herd = target.herd
    layout = write_layout(str(tmp_path / "layout"), layers=2, random_layer_size="32MiB", seed=f"p2p-{uuid.uuid4()}")
    repo = f"integration/p2p-{uuid.uuid4().hex[:8]}"
    skopeo("copy", *target.proxy.flags("dest"), "--preserve-digests", f"oci:{layout.path}:v1", target.ref(repo, "v1"))
    log_start = herd.output.count()
    before = [target.stats(herd.agent_api(k)) for k in range(AGENTS)]
    origin_before = target.stats(herd.origin_url)

    pulls = [
        subprocess.Popen(
            ["skopeo", "copy", *target.agents.flags("src"), f"docker://{herd.agent_registry(k)}/{repo}:v1",
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

    after = [target.stats(herd.agent_api(k)) for k in range(AGENTS)]
    origin_after = target.stats(herd.origin_url)
    delta = [{key: a[key] - b[key] for key in a if isinstance(a[key], int)} for a, b in zip(after, before, strict=True)]
    total = sum(blob.size for blob in (layout.manifest, layout.config, *layout.layers))
    # Every agent got the whole image (manifest, config and layers) through the scheduler ...
    assert all(d["bytes_in"] == total for d in delta), delta
    # ... partly from each other: pieces went between agents, and the origin sent fewer than three copies.
    assert sum(d["pieces_in_from_agents"] for d in delta) > 0, delta
    assert sum(d["pieces_out"] for d in delta) > 0, delta
    origin_sent = origin_after["bytes_out"] - origin_before["bytes_out"]
    assert origin_sent < AGENTS * total, (origin_sent, total)
    # Secure: no side refused another's certificate (the listeners log every refused handshake).
    assert not [line for line in herd.output.snapshot(log_start) if "TLS handshake with" in line]
