"""Agent cost: the agent's own CPU seconds per GiB it downloads and per GiB it serves to another agent.

    python bench/agent_cost.py [--size 1GiB] [--runs 3] [--cold] [--work DIR] [--out FILE]

Each run starts a fresh kraken-origin, kraken-tracker and two kraken-agents, A and B, each its own ``twistd``
process on loopback, with no bandwidth limits (``p2p.bandwidth.enabled: false``) and the default piece lengths.
A fresh blob of ``--size`` random bytes is uploaded to the origin over its HTTP API. Then:

1. A is asked for the blob (``HEAD`` on its agent API, answered once the blob is in its cache): every piece
   comes from the origin. Measured: A's CPU (downloading), the origin's CPU, the time.
2. The origin is stopped, and B is asked for the blob: the tracker still holds the metainfo (cached when A asked
   for it) and hands out A, the only peer left, so every piece comes from A (checked with B's counters).
   Measured: B's CPU (downloading), A's CPU (serving), the time.

CPU is user + system time from ``/proc/<pid>/stat`` (the whole process: the reactor thread and the thread pools
that hash, write and read pieces), read just before and just after each download. B's copy is read back over
its API and checked against the blob's SHA-256 after the measurement. Before each download, a scratch file
of the blob's size is written and deleted (``warm_page_cache``; ``--cold`` skips it), so that a VM's lazily
backed memory does not count as the agent's system time. The table gives medians over the runs.

Prints Markdown; ``--out FILE`` also appends it to FILE.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _daemons import Agent, Cluster, emit, write_blob  # noqa: E402
from tracker_load import request, upload  # noqa: E402

from kraken.config import parse_size  # noqa: E402
from kraken.core import MetaInfo  # noqa: E402

NAMESPACE = "bench/agent-cost"
GIB = 1 << 30


@dataclass(frozen=True)
class Cpu:
    """CPU seconds of a process: user and system (``/proc/<pid>/stat``)."""

    user: float
    system: float

    @classmethod
    def of(cls, pid: int) -> Cpu:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        tick = os.sysconf("SC_CLK_TCK")
        return cls(int(fields[11]) / tick, int(fields[12]) / tick)

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.user - other.user, self.system - other.system)

    @property
    def total(self) -> float:
        return self.user + self.system


@dataclass
class Run:
    """One run's figures: CPU used during each download, times in seconds."""

    size: int
    piece_length: int
    a_download: Cpu
    origin_serve: Cpu
    a_time: float
    b_download: Cpu
    a_serve: Cpu
    b_time: float


def pull(agent: Agent, digest: str) -> float:
    """Ask the agent for the blob; seconds until it answered (it answers once the blob is complete)."""
    start = time.monotonic()
    request(agent.api, "HEAD", f"/namespace/{NAMESPACE}/blobs/{digest}")
    return time.monotonic() - start


def check_copy(port: int, digest: str) -> None:
    """Read the agent's copy back over its API and compare its SHA-256 with the digest."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("GET", f"/namespace/{NAMESPACE}/blobs/{digest}")
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"GET of the blob from an agent: {response.status}")
        sha = hashlib.sha256()
        while chunk := response.read(1 << 20):
            sha.update(chunk)
    finally:
        conn.close()
    if "sha256:" + sha.hexdigest() != digest:
        raise RuntimeError("the agent's copy does not match the blob's digest")


def warm_page_cache(work: str, size: int) -> None:
    """Write and delete ``size`` bytes, so the download that follows writes into page-cache memory just freed.

    On a VM whose host backs guest memory lazily and takes back what the guest frees (the free page reporting
    of firecracker and other hypervisors), the first write to memory not used for a while faults into the host:
    that time lands in the writer's system time (3-4 s per GiB on the machine of bench/RESULTS.md, against
    0.7 s), and it is the VM's cost, not the agent's. ``--cold`` skips this, to show it."""
    path = os.path.join(work, "scratch")
    chunk = bytes(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size // len(chunk) + 1):
            f.write(chunk)
    os.unlink(path)


def one_run(work: str, size: int, *, warm: bool = True) -> Run:
    cluster = Cluster(work, 2, None, None)  # no bandwidth limits, the origin's default piece lengths
    origin, (a, b) = cluster.origin_daemon, cluster.agents
    try:
        blob = os.path.join(work, "blob")
        digest = write_blob(blob, size)
        upload(cluster.origin_http, NAMESPACE, blob, digest)
        os.unlink(blob)
        info = MetaInfo.from_json(
            request(cluster.origin_http, "GET", f"/namespace/{NAMESPACE}/blobs/{digest}/metainfo")
        )

        if warm:
            warm_page_cache(work, size)
        a0, o0 = Cpu.of(a.daemon.proc.pid), Cpu.of(origin.proc.pid)
        a_time = pull(a, digest)
        a1, o1 = Cpu.of(a.daemon.proc.pid), Cpu.of(origin.proc.pid)

        origin.stop()
        if warm:
            warm_page_cache(work, size)
        b0 = Cpu.of(b.daemon.proc.pid)
        b_time = pull(b, digest)
        a2, b1 = Cpu.of(a.daemon.proc.pid), Cpu.of(b.daemon.proc.pid)

        counters = json.loads(request(b.api, "GET", "/stats"))
        if counters["pieces_in_from_origins"] or counters["pieces_in_from_agents"] < info.num_pieces:
            raise RuntimeError(f"B did not get every piece from A: {counters}")
        check_copy(b.api, digest)
    finally:
        cluster.stop()
    run = Run(
        size=size, piece_length=info.piece_length, a_download=a1 - a0, origin_serve=o1 - o0, a_time=a_time,
        b_download=b1 - b0, a_serve=a2 - a1, b_time=b_time,
    )  # fmt: skip
    print(f"  {run}", file=sys.stderr, flush=True)
    return run


def sha256_cpu_per_gib(piece_length: int) -> float:
    """CPU seconds this Python takes to SHA-256 one GiB in pieces of ``piece_length`` (on one core):
    the least a downloading agent spends, since it checks every piece."""
    piece = os.urandom(piece_length)
    count = max(1, GIB // piece_length)
    start = time.process_time()
    for _ in range(count):
        hashlib.sha256(piece).digest()
    return (time.process_time() - start) * GIB / (count * piece_length)


def table(args: argparse.Namespace, runs: list[Run], sha_per_gib: float) -> list[str]:
    size = runs[0].size
    gib = size / GIB
    cold = " --cold" if args.cold else ""

    def row(what: str, cpus: list[Cpu], times: list[float] | None = None) -> str:
        totals = sorted(c.total / gib for c in cpus)
        system = statistics.median(c.system / gib for c in cpus)
        speed = f"{statistics.median(size / t / GIB for t in times):.2f} GiB/s" if times else ""
        return (
            f"| {what} | {statistics.median(totals):.2f} ({', '.join(f'{t:.2f}' for t in totals)}) "
            f"| {system:.2f} | {speed} |"
        )

    return [
        f"Agent cost: `python bench/agent_cost.py --size {args.size} --runs {args.runs}{cold}`, on {platform.node()} "
        f"({os.cpu_count()} CPUs), Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}. "
        f"A {gib:g} GiB blob in {runs[0].piece_length >> 20} MiB pieces, no bandwidth limits, all daemons "
        f"on loopback. Medians of {args.runs} runs (each run in brackets, sorted).",
        "",
        "| what | CPU-seconds per GiB (user + system) | of which system | throughput |",
        "|---|---|---|---|",
        row("agent A downloading from the origin", [r.a_download for r in runs], [r.a_time for r in runs]),
        row("the origin serving A", [r.origin_serve for r in runs]),
        row("agent B downloading from A (origin stopped)", [r.b_download for r in runs], [r.b_time for r in runs]),
        row("agent A serving B", [r.a_serve for r in runs]),
        f"| for scale: SHA-256 of 1 GiB in this Python, one core | {sha_per_gib:.2f} | | |",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1GiB", help="blob size (a fresh random blob each run)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--cold", action="store_true", help="skip the page-cache warm-up before each download (see warm_page_cache)"
    )
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    size = parse_size(args.size)
    if size <= 0 or args.runs < 1:
        parser.error("--size and --runs must be positive")
    work = args.work or tempfile.mkdtemp(prefix="kraken-agent-cost-")
    runs = []
    try:
        for i in range(args.runs):
            run_dir = os.path.join(work, f"run-{i + 1}")
            runs.append(one_run(run_dir, size, warm=not args.cold))
            shutil.rmtree(run_dir, ignore_errors=True)  # the three copies of the blob
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    emit("\n".join(table(args, runs, sha256_cpu_per_gib(runs[0].piece_length))) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
