"""Build-index nodes as real processes: a node SIGKILLed with copies of 20 tags queued for a node that
is down sends every one of them after its restart, each tag with its latest value."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
from typing import Any

from ._replication import (
    Every,
    get_tag,
    image,
    put_tag,
    running_daemons,  # noqa: F401  (the daemons fixture)
)
from .test_origin_cluster import Daemons, free_ports

REPO = "team/app"
TAGS = [f"t{i:02d}" for i in range(20)]
FAST = {"retries": 1, "backoff": "100ms", "max_backoff": "100ms", "timeout": "5s"}
RECEIVED = re.compile(r"tag team/app:(t\d\d) -> (sha256:[0-9a-f]{64}) \(duplicate\)")
SENT = re.compile(r"duplicate of team/app:(t\d\d) to \S+ -> sha256:[0-9a-f]{64} sent")


def queued(db: str) -> int:
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute("SELECT COUNT(*) FROM tag_outbox").fetchone()
    return int(n)


def test_queued_copies_survive_a_sigkill_of_the_sender(daemons: Daemons, tmp_path: Any) -> None:
    origin_port, p2p, a_port, b_port = free_ports(4)
    origin = f"http://127.0.0.1:{origin_port}"
    daemons.start(
        "origin",
        "kraken-origin",
        {
            "listen_http": f"tcp:{origin_port}:interface=127.0.0.1",
            "store": {"root": str(tmp_path / "origin")},
            "p2p": {"listen": f"tcp:{p2p}:interface=127.0.0.1"},
            "http_client": FAST,
        },
        "origin P2P listening",
    )
    nodes = [f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{b_port}"]

    def node(name: str, port: int) -> dict[str, Any]:
        return {
            "listen_http": f"tcp:{port}:interface=127.0.0.1",
            "origin": origin,
            "database": str(tmp_path / name / "tags.db"),
            "http_client": FAST,
            "cluster": {
                "nodes": nodes,
                "advertise": f"http://127.0.0.1:{port}",
                "duplicate_backoff": "200ms",
                "duplicate_backoff_max": "500ms",
            },
        }

    a = daemons.start("a", "kraken-build-index", node("a", a_port), "build-index listening")
    daemons.wait_ready()
    first, _ = image(origin, REPO, "first")
    latest, _ = image(origin, REPO, "latest")
    for tag in TAGS:
        assert put_tag(nodes[0], REPO, tag, first) == 201
    assert put_tag(nodes[0], REPO, TAGS[0], latest) == 200  # moved while its copy waits: the latest wins
    # B is not running: every copy is queued in A's database, one per tag
    assert a.output.wait_for(lambda line: "duplicate of team/app:" in line and "failed" in line)
    assert queued(str(tmp_path / "a" / "tags.db")) == len(TAGS)

    a.stop(signal.SIGKILL)
    assert a.process.returncode == -signal.SIGKILL
    b = daemons.start("b", "kraken-build-index", node("b", b_port), "build-index listening")
    again = daemons.start("a-again", "kraken-build-index", node("a", a_port), "build-index listening")
    daemons.wait_ready()

    assert again.output.wait_for(Every(SENT, set(TAGS)))
    assert b.output.wait_for(Every(RECEIVED, set(TAGS)))
    for tag in TAGS:
        assert get_tag(nodes[1], REPO, tag) == (latest if tag == TAGS[0] else first)
    received = [m.groups() for line in b.output.snapshot() if (m := RECEIVED.search(line))]
    assert (TAGS[0], first) not in received  # B never saw the superseded value
    assert sorted(t for t, _ in received) == TAGS  # each tag once
    assert queued(str(tmp_path / "a" / "tags.db")) == 0
    for d in (again, b):
        assert not [line for line in d.output.snapshot() if re.search(r"Unhandled|Traceback", line)]
    assert os.path.exists(str(tmp_path / "b" / "tags.db"))
