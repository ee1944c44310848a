"""The agent's disk cleanup in a real herd: a blob pulled through an agent is evicted once idle past a short TTI
(the log line awaited, the cache directory gone), and pulling it again downloads it again; on a filling disk (a
40 MiB tmpfs) the cleanup turns aggressive and four 12 MiB pulls fit."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from dxf import DXF

SMALL_DISK = "40m"
AGGRESSIVE = re.compile(r"cache cleanup evicted [1-9]\d* idle blobs .*aggressive True")
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


@pytest.fixture
def small_disk(tmp_path: Any) -> Iterator[str]:
    """A 40 MiB tmpfs where the herd will keep agent 0's state (``state_dir/agent-0``); lazily unmounted after
    the test (the herd may still hold it open while it stops)."""
    mount = tmp_path / "herd" / "state" / "agent-0"
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "kraken-test", str(mount)], check=True)
    try:
        yield str(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_filling_disk_makes_the_cleanup_aggressive(herd_launcher: Any, tmp_path: Any, small_disk: str) -> None:
    """Four 12 MiB blobs pulled through one agent whose disk is 40 MiB: they fit only because the cleanup turns
    aggressive past 50 % (idle after 1 s instead of the 1 h TTI) and evicts the blobs pulled before."""
    cleanup = {"enabled": True, "interval": "1s", "tti": "1h", "aggressive_threshold": 50, "aggressive_tti": "1s"}
    herd = herd_launcher.start(
        str(tmp_path / "herd"), agents=1, extra={"agent": {"cleanup": cleanup, "p2p": SHORT["p2p"]}}
    )
    repo = f"integration/full-{uuid.uuid4().hex[:8]}"
    proxy, agent = DXF(herd.registry, repo, insecure=True), DXF(herd.agent_registry(0), repo, insecure=True)
    digests = []
    for _ in range(4):
        data = os.urandom(12 << 20)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert proxy.push_blob(data=iter([data]), digest=digest) == digest
        digests.append(digest)

    for k, digest in enumerate(digests):
        start = herd.output.count()
        assert pulled(agent, digest) == digest, f"pull {k + 1} of 4"
        usage = shutil.disk_usage(small_disk)
        if k < len(digests) - 1 and usage.used >= usage.total / 2:  # past the watermark: the next sweep evicts
            assert herd.wait_for_lines(lambda line: AGGRESSIVE.search(line) is not None, start)
    usage = shutil.disk_usage(small_disk)
    assert usage.used < usage.total * 0.9, usage
    with urllib.request.urlopen(f"{herd.agent_api(0)}/stats", timeout=30) as r:
        counts = json.load(r)["cleanup"]
    assert counts["aggressive_sweeps"] >= 1 and counts["blobs_evicted"] >= 2 and counts["sweep_failures"] == 0, counts
    assert [line for line in herd.log_lines() if "Traceback" in line or "No space left" in line] == []
