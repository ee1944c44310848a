"""The swarm benchmark's pieces (bench/swarm.py is its command line; bench/netbench.py reuses them): one blob
requested by N agents at once, every daemon capped at the same rate.

    python bench/swarm.py [--agents 10,25,50] [--runs 3] [--size 64MiB] [--rate 20Mbit] [--piece 1MiB]
                          [--tls off|on|both] [--uncapped 1GiB] [--work DIR] [--out FILE]

One kraken-origin, one kraken-tracker and max(N) kraken-agents run as separate ``twistd`` processes on free
loopback ports. The origin and every agent are capped at ``--rate`` each way by their own P2P bandwidth limits
(token buckets on piece payloads). For each N, ``--runs`` times, a fresh blob of ``--size`` random bytes is
uploaded to the origin over its HTTP API, then the first N agents are asked for it at the same moment (``HEAD``
on the agent API, which answers once the blob is in the agent's cache). Reported per N: each agent's completion
time over the ideal size/rate (median and worst), the origin's P2P egress in copies of the blob, the CPU
seconds all daemons used, and the agents' peak RSS. Two agents' copies are read back and checked against the
blob's SHA-256.

``--tls on``: P2P over TLS (``p2p: {tls: true}``) and every daemon's ``tls`` block (mutual TLS on its HTTP
listeners, kraken/cli/certs.py's development CA); ``--tls both``: a plain cluster, then a TLS one, the same runs
on each, and a table of the slowest agent with and without TLS at each N.

``--uncapped SIZE`` adds the single-agent run: one origin and one agent without bandwidth limits, one blob of
SIZE; reported: the agent's throughput and peak RSS, beside the time curl takes to GET the same blob from the
origin's HTTP API in the same run.

Prints Markdown; ``--out FILE`` also appends it to FILE.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import _daemons  # noqa: E402
from _daemons import Agent, BenchTLS, Place, cpu_seconds, emit, write_blob  # noqa: E402

from kraken.config import parse_size  # noqa: E402

NAMESPACE = "bench/swarm"

free_port = _daemons.free_port  # bench/baselines.py and bench/netbench.py take it from here


REQUEST_TIMEOUT = 3600.0


def parse_rate(text: str) -> int:
    """``100Mbit``, ``1.5Gbit``, ``800Kbit`` or a plain number: bits per second (decimal prefixes)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMG]?)bit\s*", text) or re.fullmatch(r"\s*([0-9]+)()\s*", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (try 100Mbit)")
    return int(float(m.group(1)) * {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}[m.group(2)])


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            host: str = "127.0.0.1", context: ssl.SSLContext | None = None) -> bytes:  # fmt: skip
    """One request (HTTPS with ``context``); the body, or for 201/202/POST the Location header."""
    conn = (
        http.client.HTTPSConnection(host, port, timeout=REQUEST_TIMEOUT, context=context)
        if context
        else http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT)
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        if not 200 <= response.status < 300 and response.status != 409:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
        if response.status in (201, 202) or method == "POST":
            return (response.getheader("Location") or "").encode() or data
        return data
    finally:
        conn.close()


def upload(origin: Place, origin_port: int, path: str, digest: str, tls: BenchTLS | None = None) -> None:
    """Start, PATCH the whole file, commit: the origin's upload protocol (kraken/origin/http.py), with curl run
    on the origin's host (over mutual TLS with ``tls``)."""
    base = f"{origin.local_url(origin_port, 'https' if tls else 'http')}/namespace/{NAMESPACE}/blobs/{digest}/uploads"
    curl = [*origin.prefix, "curl", "-sS", "--fail-with-body", "-H", "Expect:", *(tls.curl() if tls else [])]
    uid = subprocess.run([*curl, "-X", "POST", "-o", "/dev/null", "-w", "%header{location}", base],
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    if not uid:
        raise RuntimeError(f"the origin gave no upload id for {digest}")
    size = os.path.getsize(path)
    subprocess.run([*curl, "-o", "/dev/null", "-X", "PATCH", "-T", path, "-H", f"Content-Range: 0-{size}",
                    f"{base}/{uid}"], check=True)  # fmt: skip
    subprocess.run([*curl, "-o", "/dev/null", "-X", "PUT", f"{base}/{uid}"], check=True)


def stats(port: int, host: str = "127.0.0.1", context: ssl.SSLContext | None = None) -> dict[str, int]:
    return json.loads(request(port, "GET", "/stats", host=host, context=context))


class Cluster(_daemons.Cluster):
    """The swarm's cluster (``_daemons.Cluster``), which also reads the origin's counters."""

    @property
    def context(self) -> ssl.SSLContext | None:
        """The bench's client context (None: plain HTTP)."""
        if self.tls is None:
            return None
        if not hasattr(self, "_context"):
            self._context = self.tls.context()
        return self._context

    def origin_stats(self) -> dict[str, int]:
        return stats(self.origin_http, self.origin.ip, self.context)


#: How a host asks its agent for the blob: ``head`` (a HEAD on the agent's API, answered once the blob is whole)
#: or ``stream`` (a client reading the blob from the agent's registry on the host itself as it arrives, as
#: containerd does: with ``p2p.stream_window`` the pieces it waits for are asked for first).
READERS = ("head", "stream")


def read_through_registry(cluster: Cluster, agent: Agent, digest: str) -> None:
    """GET the blob from the agent's registry port on the agent's own host (no capped link crossed), body
    discarded; raises if the GET fails."""
    url = f"{agent.place.local_url(agent.registry, cluster.scheme)}/v2/{NAMESPACE}/blobs/{digest}"
    tls = cluster.tls.curl() if cluster.tls else []
    subprocess.run([*agent.place.prefix, "curl", "-sSf", "-o", "/dev/null", *tls, url], check=True)


def pull_all(cluster: Cluster, agents: list[Agent], digest: str, reader: str = "head") -> list[float]:
    """Ask every agent for the blob at the same moment (``reader``: see ``READERS``); each one's seconds until
    it answered (``head``) or the last byte was read (``stream``)."""
    barrier = threading.Barrier(len(agents) + 1)
    times: list[float] = [0.0] * len(agents)
    errors: list[BaseException] = []

    def one(i: int, agent: Agent) -> None:
        barrier.wait()
        start = time.monotonic()
        try:
            if reader == "stream":
                read_through_registry(cluster, agent, digest)
            else:
                request(agent.api, "HEAD", f"/namespace/{NAMESPACE}/blobs/{digest}", host=agent.place.ip,
                        context=cluster.context)  # fmt: skip
        except BaseException as e:  # reported after the join
            errors.append(e)
        times[i] = time.monotonic() - start

    threads = [threading.Thread(target=one, args=(i, a)) for i, a in enumerate(agents)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} agents failed: {errors[0]}")
    return times


def verify(agent: Agent, digest: str, tls: BenchTLS | None = None) -> None:
    """Read the agent's copy back on the agent's own host (so a capped link is not crossed) and check it."""
    url = f"{agent.place.local_url(agent.api, 'https' if tls else 'http')}/namespace/{NAMESPACE}/blobs/{digest}"
    curl = [*agent.place.prefix, "curl", "-sSf", *(tls.curl() if tls else []), url]
    proc = subprocess.Popen(curl, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    h = hashlib.sha256()
    while chunk := proc.stdout.read(1 << 20):
        h.update(chunk)
    if proc.wait() != 0:
        raise RuntimeError(f"reading the blob back from {agent.daemon.name} failed")
    assert "sha256:" + h.hexdigest() == digest, "an agent's copy does not match"


COUNTERS = ("pieces_in_from_origins", "pieces_in_from_agents", "duplicate_pieces", "requests_timed_out",
            "requests_refused")  # fmt: skip


def stage_blob(cluster: Cluster, size: int, work: str, name: str) -> str:
    """A fresh blob of ``size`` random bytes, stored on the origin; returns its digest."""
    blob = os.path.join(work, name)
    digest = write_blob(blob, size)
    upload(cluster.origin, cluster.origin_http, blob, digest, cluster.tls)
    os.unlink(blob)
    return digest


def measure_pull(
    cluster: Cluster, n: int, digest: str, size: int, reader: str = "head"
) -> tuple[list[float], float, float]:
    """The blob asked of the first ``n`` agents at once (``reader``: see ``READERS``): (each agent's seconds,
    origin P2P egress in copies of the blob, CPU seconds of all daemons). Two agents' copies are checked against
    the digest."""
    agents = cluster.agents[:n]
    origin_before = cluster.origin_stats()["bytes_out"]
    counters_before = [stats(a.api, a.place.ip, cluster.context) for a in agents]
    cpu_before = cluster.cpu()
    times = pull_all(cluster, agents, digest, reader)
    cpu = cluster.cpu() - cpu_before
    copies = (cluster.origin_stats()["bytes_out"] - origin_before) / size
    for agent in (agents[0], agents[-1]):
        verify(agent, digest, cluster.tls)
    counters = [stats(a.api, a.place.ip, cluster.context) for a in agents]
    sums = {k: sum(c[k] for c in counters) - sum(c[k] for c in counters_before) for k in COUNTERS}
    print(f"  N={n}: {max(times):.1f} s worst; counters: {sums}", file=sys.stderr, flush=True)
    return times, copies, cpu


def one_swarm_run(cluster: Cluster, n: int, size: int, work: str) -> tuple[list[float], float, float]:
    """A fresh blob on the origin, asked of the first ``n`` agents at once: (each agent's seconds, origin egress
    in copies of the blob, CPU seconds of all daemons)."""
    digest = stage_blob(cluster, size, work, f"blob-{n}")
    return measure_pull(cluster, n, digest, size)


MODES = {"off": (False,), "on": (True,), "both": (False, True)}


def swarm_rows(args: argparse.Namespace, work: str, tls: bool) -> tuple[list[str], dict[int, float]]:
    """One cluster (plain, or TLS on every link with ``tls``), every N ``--runs`` times: the table's rows and
    each N's median over the runs of the slowest agent's seconds."""
    counts = [int(n) for n in args.agents.split(",")]
    size = parse_size(args.size)
    ideal = size * 8 / args.rate
    where = os.path.join(work, "swarm-tls" if tls else "swarm")
    os.makedirs(where, exist_ok=True)
    cluster = Cluster(where, max(counts), args.rate, parse_size(args.piece), tls=BenchTLS.make(where) if tls else None)
    rows, slowest = [], {}
    try:
        for n in counts:
            runs = [one_swarm_run(cluster, n, size, work) for _ in range(args.runs)]
            medians = sorted(statistics.median(times) / ideal for times, _, _ in runs)
            worsts = sorted(max(times) / ideal for times, _, _ in runs)
            slowest[n] = statistics.median(max(times) for times, _, _ in runs)
            rss = max(a.daemon.peak_rss() for a in cluster.agents[:n])
            row = (
                f"| {n}{' (TLS)' if tls else ''} | {size >> 20} MiB | {args.rate / 1e6:g} Mbit/s | {ideal:.1f} s "
                f"| {statistics.median(medians):.2f}x | {statistics.median(worsts):.2f}x "
                f"({', '.join(f'{w:.2f}' for w in worsts)}) "
                f"| {statistics.median(c for _, c, _ in runs):.2f} | {statistics.median(u for _, _, u in runs):.1f} s "
                f"| {rss >> 20} MiB |"
            )
            print(row, flush=True)
            rows.append(row)
    finally:
        cluster.stop()
    return rows, slowest


def tls_comparison(plain: dict[int, float], secure: dict[int, float]) -> list[str]:
    """``--tls both``: the slowest agent without and with TLS at each N, and their ratio."""
    rows = [
        "",
        "Slowest agent without and with TLS (P2P over mutual TLS, every daemon's tls block), medians of the runs:",
        "",
        "| agents | slowest plain | slowest TLS | TLS / plain |",
        "|---|---|---|---|",
    ]
    for n in plain:
        rows.append(f"| {n} | {plain[n]:.2f} s | {secure[n]:.2f} s | {secure[n] / plain[n]:.2f}x |")
    return rows


def swarm_runs(args: argparse.Namespace, work: str) -> list[str]:
    rows, slowest = [], []
    for tls in MODES[args.tls]:
        mode_rows, mode_slowest = swarm_rows(args, work, tls)
        rows += mode_rows
        slowest.append(mode_slowest)
    tls_flag = f" --tls {args.tls}" if args.tls != "off" else ""
    header = [
        f"Swarm: `python bench/swarm.py --agents {args.agents} --size {args.size} --rate {args.rate / 1e6:g}Mbit "
        f"--piece {args.piece} --runs {args.runs}{tls_flag}`, on {platform.node()} ({os.cpu_count()} CPUs), "
        f"{time.strftime('%Y-%m-%d')}. Medians of {args.runs} runs (the worst agent of every run in brackets).",
        "",
        "| agents | blob | rate (each way, each daemon) | ideal | median agent / ideal | worst agent / ideal "
        "| origin egress (copies) | CPU (all daemons) | agent peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    return header + rows + (tls_comparison(*slowest) if args.tls == "both" else [])


def uncapped_run(args: argparse.Namespace, work: str) -> list[str]:
    size = parse_size(args.uncapped)
    cluster = Cluster(os.path.join(work, "uncapped"), 1, None, parse_size(args.piece))
    try:
        blob = os.path.join(work, "blob-uncapped")
        digest = write_blob(blob, size)
        upload(cluster.origin, cluster.origin_http, blob, digest)
        os.unlink(blob)
        origin, agent = cluster.daemons[0].proc.pid, cluster.agents[0].daemon.proc.pid
        before = cpu_seconds(origin), cpu_seconds(agent)
        [took] = pull_all(cluster, cluster.agents, digest)
        origin_cpu, agent_cpu = cpu_seconds(origin) - before[0], cpu_seconds(agent) - before[1]
        rss = cluster.agents[0].daemon.peak_rss()
        # The baseline, same blob, same origin, same run: one HTTP GET of it with curl.
        start = time.monotonic()
        url = f"http://127.0.0.1:{cluster.origin_http}/namespace/{NAMESPACE}/blobs/{digest}"
        subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True)
        curl = time.monotonic() - start
    finally:
        cluster.stop()
    row = (
        f"| {size >> 20} MiB | {took:.2f} s | {size / took / 1e9:.2f} GB/s "
        f"| {curl:.2f} s ({size / curl / 1e9:.2f} GB/s) | {took / curl:.2f}x | {origin_cpu:.1f} s + {agent_cpu:.1f} s "
        f"| {rss >> 20} MiB |"
    )
    print(row, flush=True)
    return [
        "",
        f"One uncapped agent pulling from one origin (`--uncapped {args.uncapped}`), beside curl fetching the same"
        " blob from the origin's HTTP API:",
        "",
        "| blob | P2P time | P2P throughput | curl from the origin | P2P / curl | CPU origin + agent "
        "| agent peak RSS |",
        "|---|---|---|---|---|---|---|",
        row,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", default="10,25,50", help="comma-separated agent counts")
    parser.add_argument("--runs", type=int, default=3, help="runs per agent count (a fresh blob each)")
    parser.add_argument("--size", default="64MiB")
    parser.add_argument("--rate", type=parse_rate, default=parse_rate("20Mbit"))
    parser.add_argument("--piece", default="1MiB", help="the origin's piece length (its default for blobs under 2 GiB)")
    parser.add_argument(
        "--tls", choices=tuple(MODES), default="off", help="all links over TLS (on), or plain and TLS, same runs (both)"
    )
    parser.add_argument("--uncapped", default=None, help="also run one uncapped agent on a blob of this size")
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="kraken-swarm-")
    try:
        lines = swarm_runs(args, work) if args.agents else []
        if args.uncapped:
            lines += uncapped_run(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
