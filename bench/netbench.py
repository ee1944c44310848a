"""Side-by-side swarm benchmark: our P2P against BitTorrent and a central registry, same hosts, same caps.

    python bench/netbench.py [--mode netns|loopback] [--agents 10,25,50] [--size 256MiB] [--rate 20Mbit]
                             [--systems ours,ours-window,aria2,libtorrent,registry] [--registry-agents 10]
                             [--registry-size 32MiB] [--piece 1MiB] [--reader head|stream] [--stream-window 8]
                             [--piece-log] [--own-limits [FRACTION]] [--plots DIR] [--json FILE] [--out FILE]
                             [--work DIR] [--prefix kb] [--sysctl KEY=VALUE ...]
    python bench/netbench.py --cleanup [--prefix kb]

``--mode netns`` (the default; root, iproute2): max(N) + 2 hosts, each its own network namespace on one bridge,
capped at ``--rate`` each way with tbf (bench/netns.py). Host 1 holds our origin, later the BitTorrent seeders,
later docker-registry; host 2 our tracker, later opentracker; hosts 3.. the agents, later the leechers and the
curls. The machine's ARP table limits are raised for the run (``netns.neighbour_room``), so that every host may
talk to every other as real hosts could. The namespaces are removed at the end, also on an error, Ctrl-C, SIGTERM
or SIGHUP; ``--cleanup`` removes what a SIGKILLed run left.

``--mode loopback``: the same systems on 127.0.0.1, capped by their own limits: our daemons' P2P bandwidth
limits, aria2c's ``--max-overall-*-limit``, libtorrent's rate limits, curl's ``--limit-rate`` and, for the
registry's upload, a capped relay (bench/_relay.py). For machines without namespaces; the caps are the
programs' own, so its figures are not the namespace mode's.

For each N: ours (one origin, one tracker, max(N) agents started once; a fresh blob of ``--size`` random bytes
written to the origin, then a HEAD on the first N agents' API at the same moment; with ``--reader stream``, a
curl on each of the first N hosts reads the blob from its agent's registry port instead, as containerd does,
timed to its last byte), then, if ``--systems`` names it, ``ours-window`` (the same with streaming readers and
every agent's ``p2p.stream_window`` at ``--stream-window``: the pieces a reader waits for are asked for first),
then aria2c and libtorrent, each if ``--systems`` names it (one torrent of one blob of that size, a fresh
tracker and seeder per N, N leechers started together; libtorrent's peers are bench/_lt_peer.py, run by
Debian's /usr/bin/python3), then the registry (the N of ``--registry-agents`` only, with a blob of
``--registry-size``: its time grows as N x size / rate). Reported per system and N: the median and slowest
host's completion time over the ideal size/rate, the egress of host 1 in blob copies, the CPU seconds of the
system's own processes, and the whole machine's CPU use.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _swarm as swarm  # noqa: E402
import baselines  # noqa: E402
import netns  # noqa: E402
import pieces  # noqa: E402
from _daemons import busy_between, emit, machine_cpu  # noqa: E402
from report import Report, Run, Skipped, markdown, plot  # noqa: E402

from kraken.config import parse_size  # noqa: E402

SYSTEMS = ("ours", "ours-window", "aria2", "libtorrent", "registry")
BITTORRENT = {"aria2": baselines.ARIA2, "libtorrent": baselines.LIBTORRENT}


def parse_counts(text: str) -> list[int]:
    """``10,25,50`` -> [10, 25, 50]; each at least 1, at most what a /24 holds beside origin and tracker."""
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of host counts: {text!r}") from None
    if not counts or any(not 1 <= n <= netns.MAX_HOSTS - 2 for n in counts):
        raise argparse.ArgumentTypeError(f"host counts must be 1..{netns.MAX_HOSTS - 2}: {text!r}")
    return sorted(set(counts))


def parse_systems(text: str) -> list[str]:
    systems = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise argparse.ArgumentTypeError(f"systems are {', '.join(SYSTEMS)}, not {text!r}")
    return [s for s in SYSTEMS if s in systems]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("netns", "loopback"), default="netns")
    p.add_argument("--agents", type=parse_counts, default=parse_counts("10,25,50"), help="host counts N")
    p.add_argument("--size", default="256MiB", help="blob size (ours and aria2c)")
    p.add_argument("--rate", type=swarm.parse_rate, default=swarm.parse_rate("20Mbit"), help="cap, each way")
    p.add_argument("--systems", type=parse_systems, default=["ours", "aria2", "registry"])
    p.add_argument("--registry-agents", type=parse_counts, default=None, help="N for the registry (default: all)")
    p.add_argument("--registry-size", default=None, help="blob size for the registry (default: --size)")
    p.add_argument("--piece", default="1MiB", help="our origin's piece length (aria2c's torrent uses 1 MiB)")
    p.add_argument("--reader", choices=swarm.READERS, default="head", help="how each host asks `ours` for the blob")
    p.add_argument("--stream-window", type=int, default=8, help="p2p.stream_window of the `ours-window` system")
    p.add_argument(
        "--piece-log",
        action="store_true",
        help="every agent logs each piece it receives (p2p.piece_log); after each of our pulls, bench/pieces.py's "
        "summary of where the time went",
    )
    p.add_argument(
        "--own-limits",
        type=float,
        nargs="?",
        const=1.0,
        default=None,
        metavar="FRACTION",
        help="netns mode: also cap our daemons by their own P2P limits, at FRACTION (default 1.0) of --rate",
    )
    p.add_argument(
        "--sysctl",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="netns mode: set this sysctl in every host, for every system (repeatable)",
    )
    p.add_argument("--prefix", default="kb", help="namespace and interface name prefix")
    p.add_argument("--plots", default=None, help="write the two PNGs into this directory")
    p.add_argument("--json", default=None, help="write the raw results here")
    p.add_argument("--out", default=None, help="append the Markdown section to this file")
    p.add_argument("--work", default=None, help="scratch directory (default: a temporary one, removed)")
    p.add_argument("--cleanup", action="store_true", help="remove namespaces a killed run left, and exit")
    p.add_argument("--from-json", default=None, help="run nothing: the table and plots of a saved --json file")
    return p


def command_line(argv: list[str]) -> str:
    return "python bench/netbench.py " + shlex.join(argv)


class Hosts:
    """Where each role runs: host 1 (origin, seeder, registry), host 2 (trackers), hosts 3.. (the N pullers)."""

    def __init__(self, places: list[swarm.Place], egress: Callable[[], int] | None) -> None:
        self.places = places
        self.egress = egress  # bytes host 1 has sent on its link (namespaces), or None

    @property
    def origin(self) -> swarm.Place:
        return self.places[0]

    @property
    def tracker(self) -> swarm.Place:
        return self.places[1]

    def pullers(self, n: int) -> list[swarm.Place]:
        return self.places[2 : 2 + n]


@contextlib.contextmanager
def hosts(args: argparse.Namespace, count: int) -> Iterator[Hosts]:
    if args.mode == "loopback":
        yield Hosts([swarm.Place()] * count, None)
        return
    bed = netns.Testbed(count, args.rate, prefix=args.prefix, sysctls=tuple(args.sysctl))
    with bed.up():
        places = [swarm.Place(h.ip, tuple(h.exec([]))) for h in (bed.host(i) for i in range(1, count + 1))]
        origin = bed.host(1)
        yield Hosts(places, lambda: netns.interface_bytes(origin))


class Measure:
    """The machine's CPU use and host 1's link egress around one pull."""

    def __init__(self, where: Hosts) -> None:
        self.where = where

    def __enter__(self) -> Measure:
        self.cpu = machine_cpu()
        self.sent = self.where.egress() if self.where.egress else 0
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.start
        self.busy = busy_between(self.cpu, machine_cpu())
        self.sent = (self.where.egress() - self.sent) if self.where.egress else 0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_ours(args: argparse.Namespace, where: Hosts, work: str, size: int, report: Report, system: str) -> None:
    """``ours`` (hosts ask as ``--reader`` says) or ``ours-window`` (streaming readers, and every agent with
    ``p2p.stream_window`` of ``--stream-window``)."""
    counts = args.agents
    rate = args.rate if args.mode == "loopback" else None
    if args.mode == "netns" and args.own_limits:
        rate = int(args.rate * args.own_limits)
    window = system == "ours-window"
    reader = "stream" if window else args.reader
    agent_p2p = ([f"stream_window: {args.stream_window}"] if window else []) + (
        ["piece_log: true"] if args.piece_log else []
    )
    cluster = swarm.Cluster(
        os.path.join(work, system),
        max(counts),
        rate,
        parse_size(args.piece),
        where.places[: max(counts) + 2],
        agent_p2p=", ".join(agent_p2p),
    )
    pulled = []
    try:
        for n in counts:
            digest = swarm.stage_blob(cluster, size, work, f"{system}-{n}")
            with Measure(where) as m:
                times, copies, cpu = swarm.measure_pull(cluster, n, digest, size, reader)
            egress = m.sent / size if where.egress else copies
            report.runs.append(Run(system, n, size, args.rate, times, egress, cpu, m.busy, m.wall))
            log(f"{system} N={n}: slowest {max(times):.1f} s, egress {egress:.2f} copies, busy {m.busy:.0%}")
            pulled.append((n, digest))
    finally:
        cluster.stop()  # the agents' logs are complete once they have stopped
    for n, digest in pulled if args.piece_log else []:
        lines = pieces.summary(pieces.read_work(os.path.join(work, system), digest), parse_size(args.piece), args.rate)
        report.notes += [f"Where the time went, {system} at N = {n} (`--piece-log`):", "", *lines, ""]
        log("\n".join(lines))


#: A BitTorrent swarm not done after this many times the ideal time, and at least ARIA2_MIN_WAIT seconds (its
#: start-up, announces included, takes seconds whatever the blob), is stopped: a stalled swarm never ends.
ARIA2_WAIT = 5.0
ARIA2_MIN_WAIT = 60.0


def run_bittorrent(
    args: argparse.Namespace, where: Hosts, work: str, blob: str, size: int, report: Report, system: str
) -> None:
    """``aria2`` or ``libtorrent``: one torrent, a fresh tracker and seeder per N, N leechers at once."""
    own = args.mode == "loopback"
    port = swarm.free_port() if own else 6969
    torrent = baselines.Torrent(work, blob, where.tracker, port)
    rate_bytes = args.rate // 8 if own else None
    for n in args.agents:
        ports = [swarm.free_port() for _ in range(n + 1)] if own else None
        # A stalled swarm is stopped, and reported as not finished with the bound it reached.
        wait = max(ARIA2_WAIT * size * 8 / args.rate, ARIA2_MIN_WAIT)
        try:
            with Measure(where) as m:
                out = baselines.bt_run(
                    BITTORRENT[system], torrent, where.origin, where.pullers(n), work, rate_bytes, ports, wait=wait
                )
        except baselines.Unfinished as e:
            why = f"stopped: {e.count - e.finished} of {n} leechers had not finished after {wait:.0f} s"
            report.skipped.append(Skipped(system, n, why, at_least=wait / (size * 8 / args.rate)))
            log(f"{system} N={n}: {why}")
            continue
        sent = m.sent if where.egress else out.egress_bytes
        egress = None if sent is None else sent / size
        report.runs.append(Run(system, n, size, args.rate, out.times, egress, out.cpu_seconds, m.busy, m.wall))
        median = sorted(out.times)[len(out.times) // 2]
        ideal = size * 8 / args.rate
        log(
            f"{system} N={n}: slowest {max(out.times):.1f} s ({max(out.times) / ideal:.2f}x), median {median:.1f} s "
            f"({median / ideal:.2f}x), egress {'?' if egress is None else f'{egress:.2f}'} copies, busy {m.busy:.0%}"
        )


def run_registry(args: argparse.Namespace, where: Hosts, work: str, report: Report) -> None:
    size = parse_size(args.registry_size or args.size)
    counts = args.registry_agents or args.agents
    for n in args.agents:
        if n not in counts:
            report.skipped.append(Skipped("registry", n, f"only N = {', '.join(map(str, counts))} were run"))
    blob = os.path.join(work, "registry-blob")
    digest = swarm.write_blob(blob, size)
    rate_bytes = args.rate // 8 if args.mode == "loopback" else None
    registry = baselines.Registry(work, where.origin, blob, digest, rate_bytes)
    try:
        for n in counts:
            with Measure(where) as m:
                out = registry.pull(where.pullers(n), size, rate_bytes)
            sent = m.sent if where.egress else out.egress_bytes
            egress = None if sent is None else sent / size
            report.runs.append(Run("registry", n, size, args.rate, out.times, egress, out.cpu_seconds, m.busy, m.wall))
            log(f"registry N={n}: slowest {max(out.times):.1f} s, busy {m.busy:.0%}")
    finally:
        registry.stop()
        os.unlink(blob)


def _exit_on_signal(signum: int, frame: object) -> None:
    log(f"signal {signum}: stopping the daemons and removing the hosts")
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.cleanup:
        bed = netns.Testbed(1, 1, prefix=args.prefix)
        left = bed.leftovers()
        bed.teardown()
        print(f"removed {len(left)} namespaces: {' '.join(left)}" if left else "nothing to remove")
        return 0
    if args.registry_agents and not set(args.registry_agents) <= set(args.agents):
        parser().error("--registry-agents must be a subset of --agents")
    if args.from_json:
        with open(args.from_json) as f:
            return publish(args, Report.from_json(f.read()))
    size = parse_size(args.size)
    report = Report(
        mode=args.mode,
        command=command_line(argv),
        machine=f"{platform.node()} ({os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()})",
        date=time.strftime("%Y-%m-%d"),
    )
    # SIGTERM and SIGHUP unwind like Ctrl-C, through every finally: daemons stopped, namespaces removed.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    work = args.work or tempfile.mkdtemp(prefix="kraken-netbench-")
    os.makedirs(work, exist_ok=True)
    os.chmod(work, 0o755)
    try:
        with hosts(args, max(args.agents) + 2) as where:
            for system in ("ours", "ours-window"):
                if system in args.systems:
                    run_ours(args, where, work, size, report, system)
            bittorrent = [s for s in BITTORRENT if s in args.systems]
            if bittorrent:
                blob = os.path.join(work, "seed", "blob")
                os.makedirs(os.path.dirname(blob), exist_ok=True)
                swarm.write_blob(blob, size)
                try:
                    for system in bittorrent:
                        run_bittorrent(args, where, work, blob, size, report, system)
                finally:
                    os.unlink(blob)
            if "registry" in args.systems:
                run_registry(args, where, work, report)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        if args.json and sys.exc_info()[0] is not None and report.runs:
            # Interrupted or failed: keep what was measured (--from-json turns it into a table and plots).
            with open(args.json + ".partial", "w") as f:
                f.write(report.to_json())
            log(f"partial results of {len(report.runs)} runs in {args.json}.partial")
    return publish(args, report)


def publish(args: argparse.Namespace, report: Report) -> int:
    """Plots (``--plots``), JSON (``--json``), and the Markdown section: printed and appended to ``--out``."""
    plots: list[str] = []
    if args.plots:
        os.makedirs(args.plots, exist_ok=True)
        names = [f"netbench-{report.mode}-cdf.png", f"netbench-{report.mode}-slowest.png"]
        plot(report, *(os.path.join(args.plots, n) for n in names))
        plots = names
    if args.json and not args.from_json:
        with open(args.json, "w") as f:
            f.write(report.to_json())
    text = markdown(report, plots)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
