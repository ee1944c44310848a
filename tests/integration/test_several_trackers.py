"""Two trackers and two build-indexes, each its own twistd process; the first of each is SIGKILLed, and a pull
through an agent that knows both still completes.

One origin, two trackers (memory peer stores), two build-index nodes that copy tags to each other
(``cluster.nodes``), a proxy and an agent given both lists. skopeo pushes an image through the proxy: the tag
goes to the repository's first build-index node, which copies it to the other. That node is killed; then an
agent pulls the image by tag (the tag read fails over to the other node), and the tracker first in line for
the big layer is killed as soon as it is asked for that layer's metainfo, mid-pull (the origin sends at a
bounded rate, so the pull outlasts several announce intervals). The next announces go to the other tracker,
which hands out the origin; the pull completes with the pushed bytes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kraken.cli.image import write_layout
from kraken.cluster.ring import score

from ._tools import SKOPEO_TIMEOUT, check_dir_copy, skopeo

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench")
if BENCH not in sys.path:
    sys.path.append(BENCH)

from _daemons import free_port, twistd  # noqa: E402
from _fleet import Daemon  # noqa: E402

READY = 60.0  # seconds; backstops, every wait is for a log line
EVENT = 120.0
FAST = {"retries": 2, "backoff": "100ms", "max_backoff": "200ms", "timeout": "10s"}


class Daemons:
    def __init__(self, work: str) -> None:
        self.work = work
        self.started: dict[str, Daemon] = {}

    def start(self, name: str, plugin: str, config: dict[str, Any], ready: str) -> Daemon:
        path = os.path.join(self.work, f"{name}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        daemon = Daemon(name, twistd(plugin, path), os.path.join(self.work, f"{name}.log"), ready)
        self.started[name] = daemon
        return daemon

    def wait_ready(self) -> None:
        for d in self.started.values():
            d.wait_for(re.escape(d.ready), READY)

    def __enter__(self) -> Daemons:
        return self

    def __exit__(self, *exc: object) -> None:
        for d in reversed(list(self.started.values())):
            d.stop()


@pytest.fixture
def daemons(tmp_path: Any) -> Iterator[Daemons]:
    with Daemons(str(tmp_path)) as running:
        yield running


def first_for(key: bytes, urls: list[str]) -> list[str]:
    """The members in the order every client tries them for ``key`` (kraken.cluster.services)."""
    return sorted(urls, key=lambda m: (-score(key, m), m))


def test_a_pull_survives_the_loss_of_a_tracker_and_a_build_index(daemons: Daemons, tmp_path: Any) -> None:
    origin = f"http://127.0.0.1:{free_port()}"
    trackers = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    indexes = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    proxy, registry = free_port(), free_port()

    def listen(url: str) -> str:
        return f"tcp:{url.rsplit(':', 1)[1]}:interface=127.0.0.1"

    daemons.start(
        "origin",
        "kraken-origin",
        {
            "listen_http": listen(origin),
            "store": {"root": str(tmp_path / "origin")},
            # 64 MiB at 128 Mbit/s: the pull lasts several announce intervals.
            "p2p": {
                "listen": f"tcp:{free_port()}:interface=127.0.0.1",
                "bandwidth": {"enabled": True, "egress_bits_per_sec": 128 << 20},
            },
            "http_client": FAST,
        },
        "origin P2P listening",
    )
    for i, url in enumerate(trackers):
        daemons.start(
            f"tracker-{i}",
            "kraken-tracker",
            {"listen_http": listen(url), "origin": origin, "announce_interval": "1s", "access_log": True},
            "tracker listening",
        )
    for i, url in enumerate(indexes):
        daemons.start(
            f"build-index-{i}",
            "kraken-build-index",
            {
                "listen_http": listen(url),
                "origin": origin,
                "database": str(tmp_path / f"tags-{i}.db"),
                "cluster": {"nodes": indexes, "advertise": url},
                "http_client": FAST,
            },
            "build-index listening",
        )
    daemons.start(
        "proxy",
        "kraken-proxy",
        {
            "listen_http": f"tcp:{proxy}:interface=127.0.0.1",
            "origin": origin,
            "build_index": indexes,
            "uploads": {"root": str(tmp_path / "proxy-uploads")},
            "http_client": FAST,
        },
        "proxy listening",
    )
    agent = daemons.start(
        "agent",
        "kraken-agent",
        {
            "listen_registry": f"tcp:{registry}:interface=127.0.0.1",
            "listen_api": f"tcp:{free_port()}:interface=127.0.0.1",
            "tracker": trackers,
            "build_index": {"hosts": indexes, "down_for": "1m"},
            "store": {"root": str(tmp_path / "agent")},
            "p2p": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
            "http_client": FAST,
        },
        "agent API listening",
    )
    daemons.wait_ready()

    layout = write_layout(str(tmp_path / "layout"), layers=2, random_layer_size="64MiB", seed=uuid.uuid4().hex)
    repo = f"ha/app-{uuid.uuid4().hex[:8]}"
    pushed = f"docker://127.0.0.1:{proxy}/{repo}:v1"
    skopeo("copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{layout.path}:v1", pushed)

    # The tag went to the repository's first node, which copied it to the other; the first is killed.
    first_index, second_index = first_for(repo.encode(), indexes)
    taker, keeper = (daemons.started[f"build-index-{indexes.index(u)}"] for u in (first_index, second_index))
    taker.wait_for(re.escape(f"tag {repo}:v1 -> "), EVENT)
    keeper.wait_for(re.escape(f"tag {repo}:v1 -> ") + r".*\(duplicate\)", EVENT)
    taker.stop(signal.SIGKILL)

    # The agent pulls by tag; the tracker first in line for the big layer dies once asked for its metainfo.
    big = max(layout.layers, key=lambda layer: layer.size)
    first_tracker = first_for(big.digest.split(":", 1)[1].encode("ascii"), trackers)[0]
    victim = daemons.started[f"tracker-{trackers.index(first_tracker)}"]
    survivor = daemons.started[f"tracker-{1 - trackers.index(first_tracker)}"]
    target = tmp_path / "pulled"
    pull = subprocess.Popen(
        ["skopeo", "copy", "--src-tls-verify=false", f"docker://127.0.0.1:{registry}/{repo}:v1", f"dir:{target}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        victim.wait_for(re.escape(f"/blobs/{big.digest}/metainfo"), EVENT)
        mark = survivor.mark()
        victim.stop(signal.SIGKILL)
        output, _ = pull.communicate(timeout=SKOPEO_TIMEOUT)
    finally:
        if pull.poll() is None:
            pull.kill()
            pull.wait()
    assert pull.returncode == 0, output.decode(errors="replace")

    # Completion with the pushed bytes is the assertion; the log says how it got there.
    pulled_manifest, pulled = check_dir_copy(str(target))
    assert pulled_manifest == layout.read_blob(layout.manifest.digest)
    assert pulled == {layout.config.digest, *(layer.digest for layer in layout.layers)}
    lines = agent.since()
    assert any(f"get tag {repo}:v1 on {first_index} failed" in line for line in lines)
    assert any(f"on {first_tracker} failed" in line and "trying the next location" in line for line in lines)
    assert any("POST /announce" in line for line in survivor.since(mark))
    for d in daemons.started.values():
        if d not in (victim, taker):
            assert d.errors() == [], d.name
