"""What a Prometheus scrape costs each daemon: CPU per ``GET /metrics`` and the size of the answer.

    python bench/scrape_cost.py [--scrapes 300] [--size 64MiB] [--work DIR] [--out FILE]

A fleet (``bench/_fleet.py``: one origin, a tracker, a build-index, a proxy, two agents, separate ``twistd``
processes on loopback) gets a blob of ``--size`` pushed through the proxy (python-dxf) and pulled through both
agents, so every series has values (histograms included). Then, for each daemon in turn, ``--scrapes``
``GET /metrics`` one after the other on one keep-alive connection, with the daemon's CPU time (user + system,
from ``/proc``) read before and after: the CPU-milliseconds one scrape costs it, and the share of one core a
scrape every second (Prometheus's usual interval is 15-60 s) takes. This is the cost of serving metrics; the
cost of keeping them (the counters and histograms on the hot paths) is ``bench/tracker_cpu.py --metrics
both``'s.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _daemons import cpu_seconds, emit, write_blob  # noqa: E402
from _fleet import Fleet  # noqa: E402

from kraken.config import parse_size  # noqa: E402


def scrape(port: int, scrapes: int) -> tuple[float, int]:
    """(seconds of wall time, bytes of the last answer) for ``scrapes`` GETs of ``/metrics``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    size = 0
    start = time.monotonic()
    for _ in range(scrapes):
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET /metrics on port {port}: {response.status}")
        size = len(body)
    conn.close()
    return time.monotonic() - start, size


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scrapes", type=int, default=300)
    p.add_argument("--size", default="64MiB")
    p.add_argument("--work", default=None)
    p.add_argument("--out", default=None, help="append the Markdown block to this file")
    args = p.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="kraken-scrape-")
    fleet = Fleet(os.path.join(work, "fleet"), origins=1, replicas=1, agents=2)
    rows = []
    try:
        path = os.path.join(work, "blob")
        digest = write_blob(path, parse_size(args.size))
        with open(path, "rb") as f:
            fleet.dxf(fleet.proxy, "bench/scrape").push_blob(data=iter(lambda: f.read(1 << 20), b""), digest=digest)
        for k in range(2):
            for _ in fleet.dxf(fleet.registry(k), "bench/scrape").pull_blob(digest):
                pass
        ports = {
            "agent (API)": fleet.agent_ports[0][2],
            "origin": fleet.origin_http[0],
            "tracker": fleet.tracker_port,
            "build-index": fleet.build_index_port,
            "proxy": fleet.proxy_port,
        }
        names = {"agent (API)": "agent-0", "origin": "origin-0"}
        for what, port in ports.items():
            pid = fleet[names.get(what, what)].proc.pid
            scrape(port, 10)  # warm: the first answers build what later ones reuse
            before = cpu_seconds(pid)
            wall, size = scrape(port, args.scrapes)
            spent = cpu_seconds(pid) - before
            rows.append((what, spent / args.scrapes * 1000, wall / args.scrapes * 1000, size))
            print(f"{what}: {rows[-1][1]:.2f} ms CPU per scrape, {size:,} bytes", flush=True)
    finally:
        fleet.stop()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"### What a scrape costs ({time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()})",
        "",
        f"`python bench/scrape_cost.py --scrapes {args.scrapes} --size {args.size}`: after a push and two pulls of "
        f"{args.size}; {args.scrapes} scrapes of each daemon in turn.",
        "",
        "| daemon | CPU per scrape | wall per scrape | answer | a core at one scrape a second |",
        "|---|---|---|---|---|",
    ]
    for what, cpu, wall, size in rows:
        lines.append(f"| {what} | {cpu:.2f} ms | {wall:.2f} ms | {size / 1024:.1f} KiB | {cpu / 10:.2f} % |")
    lines.append("")
    lines.append(f"Median CPU per scrape over the daemons: {statistics.median(r[1] for r in rows):.2f} ms.")
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
