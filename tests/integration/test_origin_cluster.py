"""Three origins in a ring (replica count 2), each its own twistd process; one is SIGKILLed after a push.

Tracker, build-index, proxy and one agent run as separate processes too, each pointed at all three origins.
skopeo pushes an image through the proxy; every blob must then be on exactly the two origins of its placement.
The origin that is first in line for the most blobs is killed with SIGKILL (no goodbye), and the image is pulled
through the proxy and through the agent: every blob is still served, by failing over to the other replica.

It runs twice: plain, and secure, with the configuration ``kraken-herd --secure`` gives its daemons
(``kraken.herd.secure``: a development CA, TLS on every listener, client certificates required by the origins,
tracker, build-index and agent, P2P over mutual TLS, Basic auth on the proxy): the origins replicate, check
each other's health and fail over with their certificates.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from processes import OutputReader

from kraken.cli.image import write_layout
from kraken.cluster.ring import Ring
from kraken.core import Digest
from kraken.herd.secure import SecureHerd, add_secure_defaults, ensure_secure

from ._tools import PLAIN, Access, check_dir_copy, free_ports, skopeo

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT = 60.0  # seconds; a backstop, each daemon is awaited by its ready line
REPLICAS = 2


@dataclass
class Daemon:
    name: str
    process: subprocess.Popen[bytes]
    output: OutputReader

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


class Daemons:
    """Starts ``twistd -n --pidfile= kraken-<plugin> --config <yaml>`` processes and stops them all at the end."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.started: list[Daemon] = []

    def start(self, name: str, plugin: str, config: dict[str, Any], ready: str) -> Daemon:
        path = os.path.join(self.base, f"{name}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
        process = subprocess.Popen(
            [twistd, "-n", "--pidfile=", plugin, "--config", path],
            cwd=self.base,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        daemon = Daemon(name, process, OutputReader(process.stdout, os.path.join(self.base, f"{name}.log"), ready))
        self.started.append(daemon)
        return daemon

    def wait_ready(self) -> None:
        for d in self.started:
            d.output.settled.wait(START_TIMEOUT)
            if not d.output.ready.is_set():
                raise RuntimeError(
                    f"{d.name} did not start (rc={d.process.poll()}):\n" + "\n".join(d.output.snapshot())
                )

    def stop_all(self) -> None:
        for d in reversed(self.started):
            d.stop()


@pytest.fixture
def daemons(tmp_path: Any) -> Iterator[Daemons]:
    running = Daemons(str(tmp_path))
    try:
        yield running
    finally:
        running.stop_all()


def cached(root: str, digest: str) -> bool:
    hex_ = digest.split(":", 1)[1]
    return os.path.exists(os.path.join(root, "cache", hex_[:2], hex_[2:4], hex_, "data"))


def secured(config: dict[str, Any], sec: SecureHerd | None, section: str, agent: int | None = None) -> dict[str, Any]:
    """``config`` with what ``kraken-herd --secure`` adds to a daemon of ``section`` (nothing when ``sec`` is None)."""
    if sec is not None:
        add_secure_defaults(config, sec, section, agent)
    return config


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
def test_every_blob_survives_the_loss_of_an_origin(daemons: Daemons, tmp_path: Any, secure: bool) -> None:
    sec = ensure_secure(str(tmp_path / "state"), agents=1) if secure else None
    scheme = "http" if sec is None else "https"
    ports = iter(free_ports(13))
    origin_http = [next(ports) for _ in range(3)]
    members = [f"127.0.0.1:{p}" for p in origin_http]
    origin_urls = [f"{scheme}://{m}" for m in members]
    tracker, build_index, proxy = next(ports), next(ports), next(ports)
    roots = [str(tmp_path / f"origin-{i}") for i in range(3)]
    fast = {"retries": 1, "backoff": "100ms", "max_backoff": "100ms"}

    origins = [
        daemons.start(
            f"origin-{i}",
            "kraken-origin",
            secured({
                "listen_http": f"tcp:{origin_http[i]}:interface=127.0.0.1",
                "store": {"root": roots[i]},
                "p2p": {"listen": f"tcp:{next(ports)}:interface=127.0.0.1"},
                "cluster": {
                    "hosts": members,
                    "replicas": REPLICAS,
                    "scheme": scheme,
                    "refresh_interval": "1s",
                    # Never marked unhealthy here: an origin still starting when another checks it must not
                    # be skipped by the push's placement (its blobs would get one copy). After the kill, the
                    # clients find the dead origin by failing over, as the proxy's log shows.
                    "health": {"fails": 1000, "passes": 1, "timeout": "1s"},
                },
                "http_client": fast,
            }, sec, "origin"),
            "origin P2P listening",
        )
        for i in range(3)
    ]  # fmt: skip
    daemons.start(
        "tracker",
        "kraken-tracker",
        secured(
            {"listen_http": f"tcp:{tracker}:interface=127.0.0.1", "origin": origin_urls, "http_client": fast},
            sec,
            "tracker",
        ),
        "tracker listening",
    )
    daemons.start(
        "build-index",
        "kraken-build-index",
        secured({
            "listen_http": f"tcp:{build_index}:interface=127.0.0.1",
            "origin": origin_urls,
            "database": str(tmp_path / "tags.db"),
            "http_client": fast,
        }, sec, "build_index"),
        "build-index listening",
    )  # fmt: skip
    proxy_daemon = daemons.start(
        "proxy",
        "kraken-proxy",
        secured({
            "listen_http": f"tcp:{proxy}:interface=127.0.0.1",
            "origin": origin_urls,
            "build_index": f"{scheme}://127.0.0.1:{build_index}",
            "uploads": {"root": str(tmp_path / "proxy-uploads")},
            "http_client": fast,
        }, sec, "proxy"),
        "proxy listening",
    )  # fmt: skip
    registry, p2p, api = next(ports), next(ports), next(ports)
    daemons.start(
        "agent",
        "kraken-agent",
        secured({
            "listen_registry": f"tcp:{registry}:interface=127.0.0.1",
            "listen_api": f"tcp:{api}:interface=127.0.0.1",
            "tracker": f"{scheme}://127.0.0.1:{tracker}",
            "build_index": f"{scheme}://127.0.0.1:{build_index}",
            "store": {"root": str(tmp_path / "agent")},
            "p2p": {"listen": f"tcp:{p2p}:interface=127.0.0.1"},
            "http_client": fast,
        }, sec, "agent", 0),
        "agent API listening",
    )  # fmt: skip
    daemons.wait_ready()
    if sec is not None:  # every listener of every daemon (origin HTTP and P2P, ..., agent P2P) on TLS
        listening = [line for d in daemons.started for line in d.output.snapshot() if " listening on " in line]
        assert len(listening) == 3 * 2 + 3 + 3 and all(line.endswith(", TLS)") for line in listening), listening
    proxy_access = PLAIN if sec is None else Access(sec.ca.trust_dir, f"{sec.user}:{sec.password}")
    agent_access = PLAIN if sec is None else Access(sec.ca.trust_dir)

    layout = write_layout(str(tmp_path / "layout"), layers=4, random_layer_size="2MiB", seed=uuid.uuid4().hex)
    repo = f"cluster/app-{uuid.uuid4().hex[:8]}"
    skopeo(
        "copy",
        *proxy_access.flags("dest"),
        "--preserve-digests",
        f"oci:{layout.path}:v1",
        f"docker://127.0.0.1:{proxy}/{repo}:v1",
    )

    # Every blob is on exactly the two origins of its placement.
    ring = Ring(members, REPLICAS)
    blobs = [layout.manifest.digest, layout.config.digest, *(layer.digest for layer in layout.layers)]
    firsts: Counter[str] = Counter()
    for blob in blobs:
        placement = ring.placement(Digest.parse(blob))
        held = [m for m, root in zip(members, roots, strict=True) if cached(root, blob)]
        assert sorted(held) == sorted(placement), f"{blob} is on {held}, placed on {placement}"
        firsts[placement[0]] += 1

    # Kill the origin first in line for the most blobs, without warning.
    victim = members.index(firsts.most_common(1)[0][0])
    origins[victim].stop(signal.SIGKILL)
    assert origins[victim].process.returncode == -signal.SIGKILL

    expected = {layout.config.digest, *(layer.digest for layer in layout.layers)}
    manifest = layout.read_blob(layout.manifest.digest)
    for name, address, access in (("proxy", proxy, proxy_access), ("agent", registry, agent_access)):
        target = tmp_path / f"pull-{name}"
        skopeo("copy", *access.flags("src"), f"docker://127.0.0.1:{address}/{repo}:v1", f"dir:{target}")
        pulled_manifest, pulled = check_dir_copy(str(target))
        assert pulled_manifest == manifest, f"manifest pulled through the {name}"
        assert pulled == expected, f"blobs pulled through the {name}"

    # The proxy did go to the dead origin first, and moved on.
    assert any("trying the next location" in line for line in proxy_daemon.output.snapshot())
    for i, origin in enumerate(origins):
        if i != victim:
            assert not [line for line in origin.output.snapshot() if re.search(r"Unhandled|Traceback", line)]
    # Secure: every daemon's certificate was accepted on every link (a refused handshake is logged by the listener).
    refused = [line for d in daemons.started for line in d.output.snapshot() if "TLS handshake with" in line]
    assert not refused, refused
