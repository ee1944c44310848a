"""Two trackers sharing one real redis-server, six agents pulling one blob, each daemon its own ``twistd``:
a tracker SIGKILLed mid-pull, Redis SIGKILLed and started again mid-pull, a Sentinel failover of the Redis
primary mid-pull. Every pull completes with the pushed bytes, and the peers are in Redis afterwards.

The cluster (``bench/_fleet.py``): one origin, two trackers with ``peer_store.kind: redis``, a build-index, a
proxy and six agents. Agents 0-2 know both trackers, agents 3-5 only the one that is not first in line for the
blob (``kraken.cluster.services`` orders trackers by rendezvous hash of the digest): the swarm spans both
trackers, and agents of one learn the agents of the other only through Redis. The origin's P2P egress is
capped, so the pull lasts seconds; the moment to act is a log line (both trackers have served an announce,
agent 0 has a quarter of the blob), never a sleep.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis_server import RedisServer, Sentinel, peer_store, start_redis, start_sentinel

from kraken.cluster.ring import score

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench")
if BENCH not in sys.path:
    sys.path.append(BENCH)

from _clients import MIB, pull, push, repo  # noqa: E402
from _daemons import write_blob  # noqa: E402
from _fleet import Daemon, Fleet, run_all  # noqa: E402

AGENTS = 6
BLOB = 32 * MIB
ORIGIN_RATE = 24 << 20  # bits per second out of the origin: each piece leaves it at least once, so >= 11 s
WAIT = 120.0  # seconds; a backstop for log lines, far above the undisturbed pull
SLOW = "2s"  # a Redis call slower than this is an outage: above a loaded machine's stalls (a killed Redis refuses)
RECOVERED = re.compile(r"redis (back after|restarted or failed over)")


@dataclass
class HA:
    fleet: Fleet
    name: str
    digest: str
    victim: str  # the tracker first in line for the blob: agents 0-2 announce there
    survivor: str  # the other one: agents 3-5 know only this one
    redis: list[RedisServer | Sentinel] = field(default_factory=list)  # primary (, replica, sentinel)

    def trackers(self) -> list[Daemon]:
        return [self.fleet[n] for n in (self.victim, self.survivor)]

    def url(self, tracker: str) -> str:
        return self.fleet.tracker_urls[self.fleet.tracker_names.index(tracker)]

    def pulls(self) -> list[Callable[[], Any]]:
        return [lambda k=k: pull(self.fleet.registry(k), self.name, self.digest) for k in range(AGENTS)]

    def under_way(self) -> None:
        """Both trackers have answered an announce and agent 0 has a quarter of the blob."""
        for tracker in self.trackers():
            tracker.wait_for("POST /announce", WAIT)
        self.fleet["agent-0"].wait_for(rf"download of {self.digest}: \d+ of \d+ pieces", WAIT)

    def swarm_in(self, server: RedisServer) -> int:
        """How many peers of the (only) blob ``server`` holds."""
        keys = server.cli("--scan", "--pattern", "kraken:tracker:exp:*").split()
        assert len(keys) == 1, keys
        return int(server.cli("ZCARD", keys[0]))

    def stats(self, tracker: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.url(tracker) + "/stats", timeout=WAIT) as answer:
            doc: dict[str, Any] = json.load(answer)
            return doc


def first_for(digest: str, urls: list[str]) -> str:
    """The tracker every agent that knows all of ``urls`` announces ``digest`` to (kraken.cluster.services)."""
    key = digest.split(":", 1)[1].encode("ascii")
    return min(urls, key=lambda m: (-score(key, m), m))


@pytest.fixture
def ha(tmp_path: Any) -> Iterator[Callable[..., HA]]:
    """``ha(sentinel=False)``: Redis (a primary, plus a replica and a Sentinel with ``sentinel``), then the fleet,
    and the blob pushed through the proxy; everything stopped at the end, and no daemon may have logged an
    unhandled error."""
    started: list[HA] = []
    servers: list[RedisServer | Sentinel] = []

    def start(*, sentinel: bool = False) -> HA:
        path = str(tmp_path / "blob")
        digest = write_blob(path, BLOB)
        primary = start_redis(str(tmp_path / "redis"))
        servers.append(primary)
        block = peer_store(address=primary.address, timeout=SLOW)
        if sentinel:
            servers.append(start_redis(str(tmp_path / "replica"), replica_of=primary.port))
            servers.append(start_sentinel(str(tmp_path / "sentinel"), primary.port, "kraken"))
            watched = {"addresses": [servers[-1].address], "master_name": "kraken"}
            block = peer_store(sentinel=watched, timeout=SLOW)

        def agent_trackers(k: int, urls: list[str]) -> list[str]:
            return urls if k < AGENTS // 2 else [u for u in urls if u != first_for(digest, urls)]

        fleet = Fleet(
            str(tmp_path / "fleet"), origins=1, replicas=1, agents=AGENTS, trackers=2, agent_trackers=agent_trackers,
            overrides={
                "tracker": {"peer_store": block, "access_log": True},
                "origin": {"p2p": {"bandwidth": {"enabled": True, "egress_bits_per_sec": ORIGIN_RATE}}},
            },
        )  # fmt: skip
        first = fleet.tracker_urls.index(first_for(digest, fleet.tracker_urls))
        h = HA(fleet, repo(), digest, fleet.tracker_names[first], fleet.tracker_names[1 - first], servers)
        started.append(h)
        assert push(fleet.proxy, h.name, path) == digest
        fleet["origin-0"].wait_for(f"blob {digest} committed", WAIT)
        return h

    try:
        yield start
    finally:
        errors: dict[str, list[str]] = {}
        for h in started:
            h.fleet.stop()
            errors.update(h.fleet.errors())
        for server in reversed(servers):
            server.stop()
    assert not errors, f"unhandled errors in the logs: {errors}"


def test_a_tracker_killed_mid_pull(ha: Callable[..., HA]) -> None:
    h = ha()
    survivor, agent = h.fleet[h.survivor], h.fleet["agent-0"]
    marks: list[int] = []

    def kill_mid_pull() -> None:
        h.under_way()
        marks.extend((survivor.mark(), agent.mark()))
        h.fleet.kill(h.victim)

    results = run_all([*h.pulls(), kill_mid_pull])
    assert results[:AGENTS] == [(h.digest, BLOB)] * AGENTS
    # Agent 0 had three quarters to go: its next announce failed over to the survivor, which answered.
    victim_url = h.url(h.victim)
    assert any(
        f"on {victim_url} failed" in line and "trying the next location" in line for line in agent.since(marks[1])
    )
    assert any("POST /announce" in line for line in survivor.since(marks[0]))
    assert h.swarm_in(h.redis[0]) == AGENTS
    assert h.stats(h.survivor)["peer_store"]["kind"] == "redis"


def test_redis_restarted_mid_pull(ha: Callable[..., HA]) -> None:
    h = ha()
    trackers = h.trackers()

    def restart_mid_pull() -> None:
        h.under_way()
        marks = [t.mark() for t in trackers]
        primary = h.redis[0]
        assert isinstance(primary, RedisServer)
        primary.process.kill()  # SIGKILL: nothing saved
        primary.stop()
        for t, mark in zip(trackers, marks, strict=True):
            t.wait_for("redis unreachable", WAIT, mark)
        h.redis[0] = start_redis(primary.work_dir, primary.port)  # empty, on the same port
        for t, mark in zip(trackers, marks, strict=True):
            t.wait_for(RECOVERED, WAIT, mark)

    results = run_all([*h.pulls(), restart_mid_pull])
    assert results[:AGENTS] == [(h.digest, BLOB)] * AGENTS
    restarted = h.redis[0]
    assert isinstance(restarted, RedisServer)
    assert h.swarm_in(restarted) == AGENTS  # written back by the trackers, or announced again
    for name, t in zip((h.victim, h.survivor), trackers, strict=True):
        lines = t.since()
        assert sum("redis unreachable" in line for line in lines) == 1, name  # once, not per announce
        assert sum(bool(RECOVERED.search(line)) for line in lines) == 1, name
        stats = h.stats(name)["peer_store"]
        assert stats | {"peers": 0} == {
            "kind": "redis", "reachable": True, "outages": 1, "bad_entries": 0, "blobs": 1, "peers": 0,
        }  # fmt: skip
        assert stats["peers"] >= AGENTS // 2  # its own agents, and those of the other tracker read from Redis


def test_a_sentinel_failover_mid_pull(ha: Callable[..., HA]) -> None:
    h = ha(sentinel=True)
    trackers = h.trackers()
    primary, replica = h.redis[0], h.redis[1]
    assert isinstance(primary, RedisServer) and isinstance(replica, RedisServer)

    def fail_over_mid_pull() -> None:
        h.under_way()
        marks = [t.mark() for t in trackers]
        primary.process.kill()
        primary.stop()
        for t, mark in zip(trackers, marks, strict=True):
            t.wait_for(RECOVERED, WAIT, mark)  # on the replica Sentinel promoted

    results = run_all([*h.pulls(), fail_over_mid_pull])
    assert results[:AGENTS] == [(h.digest, BLOB)] * AGENTS
    assert replica.cli("ROLE").splitlines()[0] == "master"
    assert h.swarm_in(replica) == AGENTS
    for name in (h.victim, h.survivor):
        assert h.stats(name)["peer_store"]["outages"] >= 1
