"""Two ``twistd kraken-tracker`` processes sharing one real redis-server (``peer_store.kind: redis``).

Announces are plain HTTP POSTs to each tracker. A peer announced to one is handed out by the other; Redis
SIGKILLed mid-session: every announce is still answered (from each tracker's memory), ``redis unreachable``
is logged once per tracker however many announces come; Redis started again, empty, on the same port:
``redis back`` once, and the peers (the seeder too, which never announces again) are in Redis again
without any agent announcing. With Sentinel: the primary SIGKILLed, Sentinel promotes the replica, the
trackers follow it and keep answering, and the peers are on the new primary.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from redis_server import RedisServer, Sentinel, free_port, start_redis, start_sentinel
from servers import ServerProcess

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WAIT = 60.0  # seconds; a backstop, every wait is for a log line or an answer
INFO_HASH = "ab" * 32
DIGEST = "sha256:" + "cd" * 32


class Tracker(ServerProcess):
    """``twistd -n kraken-tracker`` with a config; ``announce`` POSTs, ``wait_for`` waits for a log line."""

    def __init__(self, base: str, name: str, peer_store: dict[str, Any]) -> None:
        self.port = free_port()
        config = {
            "listen_http": f"tcp:{self.port}:interface=127.0.0.1",
            "origin": f"http://127.0.0.1:{free_port()}",  # none: answers hold agents only
            "announce_interval": "1s",
            "peer_store": peer_store,
        }
        path = os.path.join(base, f"{name}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        argv = [twistd, "-n", "--pidfile=", "kraken-tracker", "--config", path]
        super().__init__(name, argv, re.compile("tracker listening"), env)

    def announce(self, n: int, *, complete: bool = False) -> set[str]:
        """Peer ``n`` announces the blob; the peer ids of the answer."""
        body = {
            "peer_id": pid(n), "ip": f"10.0.0.{n}", "port": 16001, "namespace": "library/test",
            "digest": DIGEST, "info_hash": INFO_HASH, "complete": complete,
        }  # fmt: skip
        url = f"http://127.0.0.1:{self.port}/announce"
        with urllib.request.urlopen(urllib.request.Request(url, json.dumps(body).encode()), timeout=WAIT) as answer:
            assert answer.status == 200
            return {p["peer_id"] for p in json.load(answer)["peers"]}

    def wait_for(self, text: str, start: int = 0) -> None:
        assert self.output.wait_for(lambda line: text in line, start, WAIT), f"{self.name}: no {text!r} in its log"

    def count(self, text: str) -> int:
        return sum(text in line for line in self.output.snapshot())


def pid(n: int) -> str:
    return f"{n:040x}"


def redis_cli(port: int, *command: str) -> str:
    done = subprocess.run(["redis-cli", "-p", str(port), *command], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def redis_block(**redis: Any) -> dict[str, Any]:
    return {
        "kind": "redis",
        "redis": {"timeout": "500ms", "sync_interval": "100ms", "check_interval": "200ms", **redis},
    }


@pytest.fixture
def stack(tmp_path: Any) -> Iterator[list[Any]]:
    """Processes started by a test, stopped at the end whatever happens (last started, first stopped)."""
    started: list[Any] = []
    try:
        yield started
    finally:
        for process in reversed(started):
            process.stop()


def test_two_trackers_share_peers_and_ride_out_a_redis_restart(tmp_path: Any, stack: list[Any]) -> None:
    redis: RedisServer = start_redis(str(tmp_path / "redis"))
    stack.append(redis)
    one = Tracker(str(tmp_path), "tracker-1", redis_block(address=redis.address))
    stack.append(one)
    two = Tracker(str(tmp_path), "tracker-2", redis_block(address=redis.address))
    stack.append(two)

    assert one.announce(1) == set()
    assert one.announce(2, complete=True) == set()  # a seeder: announces once
    # tracker 1 answered peer 1 after its read, sent after its write: tracker 2 reads both back
    assert two.announce(3) == {pid(1), pid(2)}
    assert one.announce(1) == {pid(2), pid(3)}

    redis.process.kill()  # SIGKILL: no goodbye, nothing saved
    redis.stop()
    for _ in range(20):  # every announce answered, from each tracker's memory
        assert two.announce(3) == {pid(1), pid(2)}
        assert one.announce(1) == {pid(2), pid(3)}
    one.wait_for("redis unreachable")
    two.wait_for("redis unreachable")
    assert two.announce(4) == {pid(1), pid(2), pid(3)}  # a newcomer during the outage

    marks = (one.output.count(), two.output.count())
    restarted = start_redis(redis.work_dir, redis.port)  # empty, on the same port
    stack.append(restarted)
    one.wait_for("redis back", marks[0])
    two.wait_for("redis back", marks[1])
    # Written back by the trackers, with no announce: the seeder too.
    members = set(redis_cli(restarted.port, "ZRANGE", "kraken:tracker:exp:" + INFO_HASH, "0", "-1").split())
    assert members == {pid(1), pid(2), pid(3), pid(4)}
    fresh = Tracker(str(tmp_path), "tracker-3", redis_block(address=restarted.address))
    stack.append(fresh)
    assert fresh.announce(5) == {pid(1), pid(2), pid(3), pid(4)}
    for tracker in (one, two):
        assert tracker.count("redis unreachable") == 1
        assert tracker.count("redis back") == 1
        assert tracker.count("Traceback") == 0


def test_a_sentinel_failover_keeps_the_peers(tmp_path: Any, stack: list[Any]) -> None:
    primary = start_redis(str(tmp_path / "primary"))
    stack.append(primary)
    replica = start_redis(str(tmp_path / "replica"), replica_of=primary.port)
    stack.append(replica)
    sentinel: Sentinel = start_sentinel(str(tmp_path / "sentinel"), primary.port, "kraken")
    stack.append(sentinel)
    block = redis_block(sentinel={"addresses": [sentinel.address], "master_name": "kraken"})
    one = Tracker(str(tmp_path), "tracker-1", block)
    stack.append(one)
    two = Tracker(str(tmp_path), "tracker-2", block)
    stack.append(two)

    assert one.announce(1) == set()
    assert one.announce(2, complete=True) == set()
    assert two.announce(3) == {pid(1), pid(2)}
    marks = (one.output.count(), two.output.count())
    primary.process.kill()
    primary.stop()
    for _ in range(5):  # answered from memory while Sentinel fails over
        assert two.announce(3) == {pid(1), pid(2)}
    # Sentinel promotes the replica; each tracker notices (unreachable, then back on the new primary)
    for tracker, mark in zip((one, two), marks, strict=True):
        tracker.wait_for("redis back", mark)
    assert two.announce(3) == {pid(1), pid(2)}
    assert one.announce(1) == {pid(2), pid(3)}
    members = set(redis_cli(replica.port, "ZRANGE", "kraken:tracker:exp:" + INFO_HASH, "0", "-1").split())
    assert members == {pid(1), pid(2), pid(3)}
    assert redis_cli(replica.port, "ROLE").splitlines()[0] == "master"
