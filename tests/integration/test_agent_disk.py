"""The agent's disk cleanup in a real herd: a blob pulled through an agent is evicted once idle past a short TTI
(the log line awaited, the cache directory gone), and pulling it again downloads it again."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
import uuid
from typing import Any

from dxf import DXF

SHORT = {
    "cleanup": {"enabled": True, "interval": "1s", "tti": "1s", "aggressive_tti": "1s"},
    "p2p": {"seeder_tti": "1s", "preemption_interval": "1s"},
}


def pulled(dxf: DXF, digest: str) -> str:
    h = hashlib.sha256()
    for chunk in dxf.pull_blob(digest):
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def test_an_idle_blob_leaves_the_agent_and_comes_back(herd_launcher: Any, tmp_path: Any) -> None:
    herd = herd_launcher.start(str(tmp_path / "herd"), agents=1, extra={"agent": SHORT})
    repo = f"integration/disk-{uuid.uuid4().hex[:8]}"
    data = os.urandom(3 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert DXF(herd.registry, repo, insecure=True).push_blob(data=iter([data]), digest=digest) == digest
    agent = DXF(herd.agent_registry(0), repo, insecure=True)
    start = herd.output.count()
    assert pulled(agent, digest) == digest
    hexdigest = digest.split(":")[1]
    blob_dir = os.path.join(herd.state_dir, "agent-0", "cache", hexdigest[:2], hexdigest[2:4], hexdigest)

    # (Not asserted: the blob in the cache between the pull and the eviction, which may come at once.)
    assert herd.wait_for_lines(lambda line: "cache cleanup evicted 1 idle blobs" in line, start)
    assert not os.path.exists(blob_dir)
    assert [line for line in herd.log_lines(start) if "Traceback" in line] == []
    with urllib.request.urlopen(f"{herd.agent_api(0)}/stats", timeout=30) as r:
        counts = json.load(r)["cleanup"]
    assert counts["blobs_evicted"] >= 1 and counts["sweep_failures"] == 0, counts

    assert pulled(agent, digest) == digest  # downloaded again
