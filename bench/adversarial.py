"""The adversarial run as figures: each disturbed pull or push against the undisturbed one, in the same run.

    python bench/adversarial.py [--size 64MiB] [--agents 6] [--rate 400] [--runs 3] [--work DIR] [--out FILE]

Every scenario starts a fresh cluster of separate ``twistd`` processes on loopback (``_fleet.Fleet``: three
origins in a ring with two replicas, a tracker, a build-index, a proxy and ``--agents`` agents, each agent's
P2P ingress capped at ``--rate`` Mbit/s so that a pull takes seconds), pushes a fresh blob of ``--size``
random bytes through the proxy with python-dxf, and times the agents pulling it at once (to the slowest):

- ``undisturbed``: nothing else happens;
- ``fake peers``: 60 made-up complete peers (half at closed ports, half at 10 tarpits that accept and never
  answer) announced from 127.0.0.2 before the pull;
- ``slot holders``: 10 connections that handshake and then only cancel, once a second, on each of the two
  origins that hold the blob, connected ``slot_grace`` + 1 s before the pull (the daemons' defaults);
- ``origin killed``, ``tracker killed``: SIGKILL of the blob's first origin, or of the tracker, as the
  agents' downloads start (the tracker once a quarter of agent 0's download is on disk);
- ``serving agent killed``: agent 0 pulls first and seeds; the others pull while it is SIGKILLed.

Two more figures: eight 10,000-layer manifests PUT at once (the slowest proxy health answer meanwhile, the
proxy's RSS growth, the time until all eight are refused; over the default reference limit, and under a
raised one that has them checked), and a 100 MiB push onto origins whose stores are
64 MiB tmpfs mounts (the time until the 507; root only). Goals (issue 11): a disturbed pull within 2x the
undisturbed one; health under 1 s; RSS growth under 50 MB; the full-disk answer under 5 s. Medians over
``--runs``. Prints Markdown; ``--out FILE`` also appends it to FILE.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import requests  # noqa: E402
from _clients import pull, push, repo  # noqa: E402
from _daemons import emit, write_blob  # noqa: E402
from _fleet import Fleet, run_all  # noqa: E402
from _hostile import SlotHolder, Tarpit, announce_fake, closed_port, flood_manifests, metainfo  # noqa: E402

from kraken.cluster.ring import Ring  # noqa: E402
from kraken.config import parse_size  # noqa: E402
from kraken.core import Digest  # noqa: E402

MIB = 1 << 20
WAIT = 300.0  # seconds; a backstop for log lines


class Run:
    """One scenario's fleet and blob."""

    def __init__(self, work: str, agents: int, rate: int, size: int, **fleet: Any) -> None:
        self.fleet = Fleet(work, agents=agents, agent_rate=rate, **fleet)
        self.size = size
        self.name = repo()
        path = os.path.join(work, "blob")
        self.digest = write_blob(path, size)
        if size:
            assert push(self.fleet.proxy, self.name, path) == self.digest
            os.unlink(path)

    def placement(self) -> list[str]:
        return [f"origin-{self.fleet.members.index(m)}" for m in Ring(self.fleet.members, 2).placement(
            Digest.parse(self.digest))]  # fmt: skip

    def pull_all(self, agents: list[int], during: Callable[[], None] | None = None) -> float:
        """Seconds until every agent in ``agents`` has the blob (checked byte for byte)."""
        jobs: list[Callable[[], Any]] = [lambda k=k: pull(self.fleet.registry(k), self.name, self.digest)
                                         for k in agents]  # fmt: skip
        start = time.monotonic()
        results = run_all([*jobs, during] if during else jobs)
        elapsed = time.monotonic() - start
        assert results[: len(agents)] == [(self.digest, self.size)] * len(agents), results
        return elapsed

    def started(self, agents: list[int]) -> None:
        for k in agents:
            self.fleet[f"agent-{k}"].wait_for(f"downloading {self.digest}", WAIT)


def undisturbed(run: Run, n: int) -> float:
    return run.pull_all(list(range(n)))


def fake_peers(run: Run, n: int) -> float:
    f = run.fleet
    info = metainfo(f.tracker_url, run.name, run.digest)
    tarpits = [Tarpit("127.0.0.2") for _ in range(10)]
    try:
        for i in range(60):
            port = tarpits[i % 10].port if i % 2 else closed_port("127.0.0.2")
            announce_fake(f.tracker_url, info, run.name, port, source="127.0.0.2", peer_id=f"{i:040x}")
        return run.pull_all(list(range(n)))
    finally:
        for t in tarpits:
            t.close()


def slot_holders(run: Run, n: int) -> float:
    f = run.fleet
    info = metainfo(f.tracker_url, run.name, run.digest)
    holders = [
        SlotHolder(f.origin_p2p[int(o.split("-")[1])], info, run.name) for o in run.placement() for _ in range(10)
    ]
    time.sleep(6.0)  # the default slot_grace (5 s) has passed: the holders have been there a while
    try:
        return run.pull_all(list(range(n)))
    finally:
        for h in holders:
            h.client.close()


def origin_killed(run: Run, n: int) -> float:
    def kill() -> None:
        run.started(list(range(n)))
        run.fleet.kill(run.placement()[0])

    return run.pull_all(list(range(n)), kill)


def tracker_killed(run: Run, n: int) -> float:
    def kill() -> None:
        run.started(list(range(n)))
        run.fleet["agent-0"].wait_for(rf"download of {run.digest}: \d+ of \d+ pieces", WAIT)
        run.fleet.kill("tracker")

    return run.pull_all(list(range(n)), kill)


def agent_killed(run: Run, n: int) -> float:
    run.pull_all([0])

    def kill() -> None:
        run.started(list(range(1, n)))
        run.fleet.kill("agent-0")

    return run.pull_all(list(range(1, n)), kill)


def agent_seeding(run: Run, n: int) -> float:
    """The undisturbed counterpart of ``agent_killed``: agent 0 seeds, the others pull."""
    run.pull_all([0])
    return run.pull_all(list(range(1, n)))


PULLS: list[tuple[str, Callable[[Run, int], float], str]] = [
    ("undisturbed", undisturbed, ""),
    ("fake peers (60, closed ports and tarpits)", fake_peers, "undisturbed"),
    ("slot holders (10 on each replica origin)", slot_holders, "undisturbed"),
    ("origin killed mid-pull", origin_killed, "undisturbed"),
    ("tracker killed mid-pull", tracker_killed, "undisturbed"),
    ("undisturbed, agent 0 seeding", agent_seeding, ""),
    ("serving agent killed mid-pull", agent_killed, "undisturbed, agent 0 seeding"),
]


def manifests(work: str, limit: int | None = None) -> tuple[float, float, int]:
    """(slowest health answer s, seconds until all eight manifests are refused, proxy RSS growth in bytes);
    with ``limit``, the proxy's ``registry.max_references`` is raised to it, so the references are checked."""
    overrides = {"proxy": {"registry": {"max_references": limit}}} if limit else None
    run = Run(work, 0, 0, 0, origins=3, overrides=overrides)
    try:
        f = run.fleet
        path = os.path.join(work, "config")
        config = write_blob(path, 512)
        assert push(f.proxy, run.name, path) == config
        flood = flood_manifests(f, run.name, config, 512)
        assert all(status == 400 for status, _ in flood.answers), flood.answers
        assert not flood.health_failures, flood.health_failures
        return flood.slowest_health, flood.seconds, flood.rss_growth
    finally:
        run.fleet.stop()


def full_disk(work: str) -> float:
    """Seconds from the start of a 100 MiB push onto full origins until the 507."""
    run = Run(work, 0, 0, 0, origins=2, tmpfs={"origin-0": "64m", "origin-1": "64m"})
    try:
        path = os.path.join(work, "big")
        write_blob(path, 100 * MIB)
        start = time.monotonic()
        try:
            push(run.fleet.proxy, run.name, path)
        except requests.HTTPError as e:
            assert e.response is not None and e.response.status_code == 507, e
            return time.monotonic() - start
        raise AssertionError("the push onto full origins succeeded")
    finally:
        run.fleet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="64MiB")
    parser.add_argument("--agents", type=int, default=6)
    parser.add_argument("--rate", type=int, default=400, help="each agent's P2P ingress cap, Mbit/s")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    size, n, rate = int(parse_size(args.size)), args.agents, args.rate * 1_000_000
    work = args.work or tempfile.mkdtemp(prefix="kraken-adversarial-")
    times: dict[str, list[float]] = {label: [] for label, _, _ in PULLS}
    health, refused, rss, disk = [], [], [], []
    checked: list[tuple[float, float, int]] = []
    for r in range(args.runs):
        for i, (label, scenario, _) in enumerate(PULLS):
            run = Run(os.path.join(work, f"run{r}-pull{i}"), n, rate, size)
            try:
                times[label].append(scenario(run, n))
            finally:
                run.fleet.stop()
            print(f"run {r + 1}: {label}: {times[label][-1]:.2f} s", file=sys.stderr)
        slowest, elapsed, grown = manifests(os.path.join(work, f"run{r}-manifests"))
        health.append(slowest)
        refused.append(elapsed)
        rss.append(grown)
        checked.append(manifests(os.path.join(work, f"run{r}-checked"), limit=20_000))
        if os.geteuid() == 0:
            disk.append(full_disk(os.path.join(work, f"run{r}-disk")))
    median = {label: statistics.median(v) for label, v in times.items()}
    lines = [
        f"### Adversarial run ({time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores)",
        "",
        f"{n} agents pull a {args.size} blob at once (each capped at {args.rate} Mbit/s in), "
        f"three origins with two replicas, medians of {args.runs} runs; `python bench/adversarial.py"
        f" --size {args.size} --agents {n} --rate {args.rate} --runs {args.runs}`.",
        "",
        "| scenario | slowest agent (s) | against | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    for label, _, base in PULLS:
        ratio = f"{median[label] / median[base]:.2f}x" if base else ""
        goal = ("met" if median[label] <= 2 * median[base] else "MISSED") + " (<= 2x)" if base else ""
        runs = ", ".join(f"{t:.1f}" for t in times[label])
        lines.append(f"| {label} | {median[label]:.2f} ({runs}) | {base} | {ratio} | {goal} |")
    lines += [
        "",
        "| figure | median | all runs | goal |",
        "|---|---|---|---|",
        f"| slowest proxy health answer during 8 x 10,000-layer manifest PUTs | {statistics.median(health):.3f} s |"
        f" {', '.join(f'{h:.3f}' for h in health)} | < 1 s |",
        f"| time until all 8 are refused (400 MANIFEST_INVALID) | {statistics.median(refused):.2f} s |"
        f" {', '.join(f'{t:.2f}' for t in refused)} | |",
        f"| proxy RSS growth over those PUTs | {statistics.median(rss) / MIB:.1f} MiB |"
        f" {', '.join(f'{b / MIB:.1f}' for b in rss)} | < 50 MB |",
    ]
    lines += [
        f"| the same with `registry.max_references: 20000` (checked in batches, refused MANIFEST_BLOB_UNKNOWN):"
        f" slowest health answer | {statistics.median(c[0] for c in checked):.3f} s |"
        f" {', '.join(f'{c[0]:.3f}' for c in checked)} | < 1 s |",
        f"| ... time until all 8 are refused | {statistics.median(c[1] for c in checked):.2f} s |"
        f" {', '.join(f'{c[1]:.2f}' for c in checked)} | |",
        f"| ... proxy RSS growth | {statistics.median(c[2] for c in checked) / MIB:.1f} MiB |"
        f" {', '.join(f'{c[2] / MIB:.1f}' for c in checked)} | < 50 MB |",
    ]
    if disk:
        lines.append(f"| 100 MiB push onto 64 MiB tmpfs origins: time to the 507 | {statistics.median(disk):.2f} s |"
                     f" {', '.join(f'{t:.2f}' for t in disk)} | < 5 s |")  # fmt: skip
    emit("\n".join(lines), args.out)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
