"""A daemon killed mid-pull (an origin, the tracker, a serving agent) fails no pull and corrupts no byte; an
agent killed mid-download and started again resumes with the pieces it had.

Each pull is throttled (the agents' P2P ingress is capped) so that it lasts long enough to act during it; the
moment to act is a log line (a download started, a quarter of it on disk), never a sleep.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from _clients import MIB, pull, push, repo
from _daemons import write_blob
from _fleet import Fleet, run_all

from kraken.cluster.ring import Ring
from kraken.core import Digest

BLOB = 32 * MIB
RATE = 100_000_000  # bits per second into each agent: about 2.7 s for the blob
WAIT = 120.0  # seconds; a safety rail for log lines, far above the undisturbed pull


def pushed(f: Fleet, tmp_path: Any, size: int = BLOB) -> tuple[str, str]:
    """(repository, digest) of a random blob pushed through the proxy and held by both of its replicas."""
    name = repo()
    path = str(tmp_path / "blob")
    digest = write_blob(path, size)
    assert push(f.proxy, name, path) == digest
    for member in Ring(f.members, 2).placement(Digest.parse(digest)):
        f[f"origin-{f.members.index(member)}"].wait_for(f"blob {digest} committed", WAIT)
    return name, digest


def pulls(f: Fleet, name: str, digest: str, agents: list[int]) -> list[Callable[[], tuple[str, int]]]:
    return [lambda k=k: pull(f.registry(k), name, digest) for k in agents]  # type: ignore[misc]


def started(f: Fleet, agents: list[int], digest: str) -> None:
    for k in agents:
        f[f"agent-{k}"].wait_for(f"downloading {digest}", WAIT)


def test_an_origin_killed_mid_pull(fleet: Callable[..., Fleet], tmp_path: Any) -> None:
    f = fleet(agents=3, agent_rate=RATE)
    name, digest = pushed(f, tmp_path)
    first = Ring(f.members, 2).placement(Digest.parse(digest))[0]
    victim = f"origin-{f.members.index(first)}"

    def kill_when_started() -> None:
        started(f, [0, 1, 2], digest)
        f.kill(victim)

    results = run_all([*pulls(f, name, digest, [0, 1, 2]), kill_when_started])
    assert results[:3] == [(digest, BLOB)] * 3
    assert not f[victim].alive()


def test_the_tracker_killed_mid_pull(fleet: Callable[..., Fleet], tmp_path: Any) -> None:
    f = fleet(agents=3, agent_rate=RATE)
    name, digest = pushed(f, tmp_path)

    def kill_when_under_way() -> None:
        started(f, [0, 1, 2], digest)
        f["agent-0"].wait_for(rf"download of {digest}: \d+ of \d+ pieces", WAIT)
        f.kill("tracker")

    results = run_all([*pulls(f, name, digest, [0, 1, 2]), kill_when_under_way])
    assert results[:3] == [(digest, BLOB)] * 3


def test_the_tracker_down_when_a_pull_starts(fleet: Callable[..., Fleet], tmp_path: Any) -> None:
    """The agents announce in vain until the tracker is back, then the pulls complete."""
    f = fleet(agents=2, agent_rate=RATE)
    name, digest = pushed(f, tmp_path)
    tracker = f["tracker"]

    def kill_then_restart() -> None:
        marks = [f[f"agent-{k}"].mark() for k in (0, 1)]
        started(f, [0, 1], digest)
        f.kill("tracker")
        for k, mark in zip((0, 1), marks, strict=True):
            f[f"agent-{k}"].wait_for(f"announce of {digest} failed", WAIT, start=mark)
        f.restart("tracker")

    results = run_all([*pulls(f, name, digest, [0, 1]), kill_then_restart])
    assert results[:2] == [(digest, BLOB)] * 2
    assert not tracker.alive() and f["tracker"].alive()


def test_a_serving_agent_killed_mid_pull(fleet: Callable[..., Fleet], tmp_path: Any) -> None:
    f = fleet(agents=5, agent_rate=RATE)
    name, digest = pushed(f, tmp_path)
    assert pull(f.registry(0), name, digest) == (digest, BLOB)  # agent 0 has it all and seeds it

    def kill_when_started() -> None:
        started(f, [1, 2, 3, 4], digest)
        f.kill("agent-0")

    results = run_all([*pulls(f, name, digest, [1, 2, 3, 4]), kill_when_started])
    assert results[:4] == [(digest, BLOB)] * 4


def test_a_restarted_agent_resumes_with_the_pieces_it_had(fleet: Callable[..., Fleet], tmp_path: Any) -> None:
    f = fleet(agents=1, agent_rate=RATE // 2)
    name, digest = pushed(f, tmp_path)
    agent = f["agent-0"]

    def kill_at_a_quarter() -> None:
        agent.wait_for(rf"download of {digest}: \d+ of \d+ pieces", WAIT)
        f.kill("agent-0")

    def doomed_pull() -> str:
        try:
            pull(f.registry(0), name, digest)
        except Exception as e:
            return type(e).__name__
        return "finished"

    outcome, _ = run_all([doomed_pull, kill_at_a_quarter])
    assert outcome != "finished"
    restarted = f.restart("agent-0")
    assert pull(f.registry(0), name, digest) == (digest, BLOB)
    resumed = restarted.wait_for(rf"downloading {digest} \(\d+ bytes, (\d+) pieces, (\d+) on disk\)", WAIT)
    pieces, kept = int(resumed.group(1)), int(resumed.group(2))
    assert pieces // 4 <= kept < pieces, f"resumed with {kept} of {pieces} pieces"
    assert not [line for line in restarted.since() if re.search(r"piece \d+ .*does not match", line)]
