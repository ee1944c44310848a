"""``kraken status`` through its entry point (``python -m kraken.cli``, what the console script calls) against
real herds: the session's plain herd, and a ``kraken-herd --secure`` of its own (https and mutual TLS with the
herd's development CA)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from servers import ServerProcess

from kraken.cli.certs import ensure_dev_ca

pytestmark = pytest.mark.integration

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KINDS = ["origin", "tracker", "build_index", "proxy", "agent", "agent", "agent"]


def kraken(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (REPO_ROOT, os.environ.get("PYTHONPATH"))))}
    command = [sys.executable, "-m", "kraken.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)


def herd_flags(herd: Any) -> list[str]:
    flags = ["--origin", herd.origin_url, "--tracker", herd.tracker_url, "--build-index", herd.build_index_url]
    flags += ["--proxy", herd.url]
    for k in range(herd.ports.agents):
        flags += ["--agent", herd.agent_api(k)]
    return flags


def closed_ports(count: int) -> list[int]:
    """``count`` distinct ports on 127.0.0.1 that nothing listens on (bound together, then released)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def closed_port() -> int:
    return closed_ports(1)[0]


def test_status_of_a_healthy_herd(herd: Any) -> None:
    done = kraken("status", *herd_flags(herd))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(KINDS)} of {len(KINDS)} daemons healthy" in done.stdout
    for url in (herd.origin_url, herd.tracker_url, herd.build_index_url, herd.url, herd.agent_api(0)):
        assert url in done.stdout


def test_status_json_of_a_healthy_herd(herd: Any) -> None:
    done = kraken("status", "--json", *herd_flags(herd))
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["healthy"] is True
    assert [d["kind"] for d in doc["daemons"]] == KINDS
    assert all(d["alive"] and d["ready"] and d["error"] is None for d in doc["daemons"])
    [origin] = [d for d in doc["daemons"] if d["kind"] == "origin"]
    assert (origin["ring_members"], origin["ring_unhealthy"]) == (1, 0)


def test_a_daemon_that_is_down_exits_1(herd: Any, tmp_path: Any) -> None:
    cluster = tmp_path / "cluster.yaml"
    down = f"http://127.0.0.1:{closed_port()}"
    cluster.write_text(yaml.safe_dump({"origin": [herd.origin_url, down], "tracker": herd.tracker_url}))
    done = kraken("status", "--config", str(cluster))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "connection refused" in done.stdout and "2 of 3 daemons healthy" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    doc = json.loads(kraken("status", "--json", "--config", str(cluster)).stdout)
    assert [d["healthy"] for d in doc["daemons"]] == [True, False, True]


def test_usage_error_exits_2() -> None:
    done = kraken("status", "--origin")
    assert done.returncode == 2 and "expected one argument" in done.stderr
    done = kraken("status")
    assert done.returncode == 2 and done.stderr.startswith("kraken status: error: no daemon to ask")


# --------------------------------------------------------------------------- over TLS


class SecureHerd(ServerProcess):
    """``twistd -n kraken-herd --secure`` with one agent; ``urls`` of its daemons (https)."""

    def __init__(self, base: str, twistd: Any) -> None:
        ports = closed_ports(5)
        self.state_dir = os.path.join(base, "state")
        listen = {name: f"tcp:{port}:interface=127.0.0.1" for name, port in zip(KINDS[:4], ports, strict=False)}
        agent_base = _agent_block()
        config = {"state_dir": self.state_dir, "agents": 1, "agent_base_port": agent_base}
        for name in KINDS[:4]:
            config[name] = {"listen_http": listen[name]}
        config["origin"]["p2p"] = {"listen": f"tcp:{ports[4]}:interface=127.0.0.1"}
        path = os.path.join(base, "herd.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        argv = twistd.command("kraken-herd", "--secure", "--config", path)
        super().__init__("kraken-herd --secure", argv, re.compile("kraken-herd ready"), env=twistd.env)
        self.urls = {name: f"https://127.0.0.1:{port}" for name, port in zip(KINDS[:4], ports, strict=False)}
        self.urls["agent"] = f"https://127.0.0.1:{agent_base + 2}"


def _agent_block() -> int:
    """A port p with p, p+1 and p+2 free."""
    for _ in range(100):
        base = closed_port()
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", base + 1))
                b.bind(("127.0.0.1", base + 2))
            return base
        except OSError:
            continue
    raise RuntimeError("no three free ports in a row")


@pytest.fixture
def secure_herd(tmp_path: Any, twistd: Any) -> Iterator[SecureHerd]:
    run = SecureHerd(str(tmp_path), twistd)
    try:
        yield run
    finally:
        run.stop()


def test_status_over_mutual_tls(secure_herd: SecureHerd, tmp_path: Any) -> None:
    ca = ensure_dev_ca(os.path.join(secure_herd.state_dir, "secure"), ["kraken-status"])
    cert, key = ca.pairs["kraken-status"]
    cluster: dict[str, Any] = dict(secure_herd.urls)
    cluster["tls"] = {"ca": ca.ca, "cert": cert, "key": key}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cluster))
    done = kraken("status", "--json", "--config", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert [d["kind"] for d in json.loads(done.stdout)["daemons"]] == [
        "origin",
        "tracker",
        "build_index",
        "proxy",
        "agent",
    ]
    # Without the herd's CA, https:// cannot be verified: each daemon is down, with the reason.
    del cluster["tls"]
    path.write_text(yaml.safe_dump(cluster))
    done = kraken("status", "--json", "--config", str(path))
    assert done.returncode == 1, done.stdout + done.stderr
    errors = {d["error"] for d in json.loads(done.stdout)["daemons"]}
    assert len(errors) == 1 and "certificate verify failed" in errors.pop()
