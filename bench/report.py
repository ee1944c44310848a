"""Results of the side-by-side swarm benchmark (bench/netbench.py): one record per system and host count,
the Markdown table, a JSON dump and the PNG plots."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

SYSTEMS = ("ours", "ours-window", "aria2", "libtorrent", "registry")
LABELS = {
    "ours": "Kraken (ours)",
    "ours-window": "Kraken, p2p.stream_window",
    "aria2": "BitTorrent (aria2c)",
    "libtorrent": "BitTorrent (libtorrent)",
    "registry": "central registry",
}


@dataclass
class Run:
    """One system pulling one blob onto ``n`` hosts at once."""

    system: str
    n: int
    size: int  # bytes
    rate: int  # bit/s, each host, each way
    times: list[float]  # seconds per host, from the common start to its completion
    egress_copies: float | None = None  # the origin's (seeder's, registry's) egress over the blob size
    cpu_seconds: float | None = None  # CPU time of the system's own processes during the pull
    busy: float | None = None  # the whole machine's CPU use during the pull, a fraction of all cores
    wall: float = 0.0  # seconds from the start to the last completion
    note: str = ""

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise ValueError(f"unknown system {self.system!r}")
        if len(self.times) != self.n:
            raise ValueError(f"{self.system} N={self.n}: {len(self.times)} completion times")

    @property
    def ideal(self) -> float:
        """Seconds one host needs at its cap for one copy: size / rate."""
        return self.size * 8 / self.rate

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.times) / self.ideal

    @property
    def slowest_ratio(self) -> float:
        return max(self.times) / self.ideal


@dataclass
class Skipped:
    """A system and host count that was asked for but not run, or stopped before every host had finished, and
    why (shown in the table, never a number). ``at_least``: for a stopped run, the slowest host's time over the
    ideal was more than this (drawn as a bound in the plot of the slowest host)."""

    system: str
    n: int
    why: str
    at_least: float | None = None


@dataclass
class Report:
    mode: str  # "netns" or "loopback"
    command: str
    machine: str
    date: str
    runs: list[Run] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # Markdown lines after the table (``--piece-log``'s summaries)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Report:
        data = json.loads(text)
        runs = [Run(**r) for r in data.pop("runs")]
        skipped = [Skipped(**s) for s in data.pop("skipped")]
        return cls(runs=runs, skipped=skipped, **data)


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


def _num(value: float | None, fmt: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{fmt}}{suffix}"


def table(report: Report) -> list[str]:
    """The Markdown table: a row per system and N, in the order systems then N; skipped ones say so."""
    egress = "eth0 bytes sent" if report.mode == "netns" else "payload counters"
    lines = [
        f"| system | hosts (N) | blob | cap each way | ideal | median host / ideal | slowest host / ideal "
        f"| origin/seeder egress (copies, {egress}) | CPU s (its processes) | machine CPU busy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows: list[tuple[int, int, str]] = []
    for r in report.runs:
        row = (
            f"| {LABELS[r.system]} | {r.n} | {_mib(r.size)} | {r.rate / 1e6:g} Mbit/s | {r.ideal:.1f} s "
            f"| {r.median_ratio:.2f}x | {r.slowest_ratio:.2f}x ({max(r.times):.1f} s) "
            f"| {_num(r.egress_copies, '.2f')} | {_num(r.cpu_seconds, '.1f')} "
            f"| {_num(None if r.busy is None else r.busy * 100, '.0f', ' %')} |"
        )
        rows.append((SYSTEMS.index(r.system), r.n, row))
    for s in report.skipped:
        what = "not run" if s.at_least is None else f"did not finish (slowest > {s.at_least:.2f}x)"
        rows.append((SYSTEMS.index(s.system), s.n, f"| {LABELS[s.system]} | {s.n} | {what}: {s.why} |" + " |" * 7))
    return lines + [row for _, _, row in sorted(rows, key=lambda t: (t[0], t[1]))]


def markdown(report: Report, plots: Sequence[str] = ()) -> str:
    title = "namespaces, tbf caps" if report.mode == "netns" else "LOOPBACK, the daemons' own bandwidth limits"
    out = [
        f"### {report.date}, {report.machine}: {title}",
        "",
        f"`{report.command}`",
        "",
        *table(report),
        *(["", *report.notes] if report.notes else []),
    ]
    for path in plots:
        out += ["", f"![{path}]({path})"]
    return "\n".join(out) + "\n"


def largest_runs(runs: Iterable[Run]) -> dict[str, Run]:
    """Per system, its run at the largest N (the CDF plot's curves)."""
    best: dict[str, Run] = {}
    for r in runs:
        if r.system not in best or r.n > best[r.system].n:
            best[r.system] = r
    return best


def cdf_points(times: Sequence[float], ideal: float) -> tuple[list[float], list[float]]:
    """Completion times over the ideal, sorted, against the fraction of hosts done by then."""
    xs = sorted(t / ideal for t in times)
    return xs, [(i + 1) / len(xs) for i in range(len(xs))]


def slowest_series(runs: Iterable[Run]) -> dict[str, tuple[list[int], list[float]]]:
    """Per system: N (ascending) against the slowest host over the ideal."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in runs:
        series.setdefault(r.system, []).append((r.n, r.slowest_ratio))
    return {s: ([n for n, _ in sorted(v)], [x for _, x in sorted(v)]) for s, v in series.items()}


def plot(report: Report, cdf_path: str, slowest_path: str) -> None:
    """Two PNGs: the completion-time CDF per system at its largest N, and the slowest host against N."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = "namespaces, tbf caps" if report.mode == "netns" else "loopback, daemons' own limits"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system, r in sorted(largest_runs(report.runs).items(), key=lambda kv: SYSTEMS.index(kv[0])):
        xs, ys = cdf_points(r.times, r.ideal)
        ax.step([0.0, *xs], [0.0, *ys], where="post", label=f"{LABELS[system]}, N={r.n}, {_mib(r.size)}")
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("completion time / ideal (blob size / cap)")
    ax.set_ylabel("fraction of hosts done")
    ax.set_title(f"Completion-time CDF ({label})")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(cdf_path, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours: dict[str, str] = {}
    for system, (ns, ratios) in sorted(slowest_series(report.runs).items(), key=lambda kv: SYSTEMS.index(kv[0])):
        (line,) = ax.plot(ns, ratios, marker="o", label=LABELS[system])
        colours[system] = line.get_color()
    for s in report.skipped:
        if s.at_least is not None:  # stopped: only a lower bound is known
            ax.plot([s.n], [s.at_least], marker="^", linestyle="none", color=colours.get(s.system, "black"),
                    markersize=9, label=f"{LABELS[s.system]}, N={s.n}: did not finish, > {s.at_least:g}x")  # fmt: skip
    ns = sorted({r.n for r in report.runs} | {s.n for s in report.skipped})
    # Not a measurement: N copies through one link at the cap, the least any central server needs.
    ax.plot(ns, ns, color="grey", linestyle="--", linewidth=1, label="one central server's bound: N x ideal")
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    top = max([*ns, *(r.slowest_ratio for r in report.runs), *(s.at_least or 0 for s in report.skipped)])
    ticks = [t for t in (1, 1.25, 1.5, 2, 3, 5, 10, 20, 50, 100, 200) if t <= top * 1.5]
    ax.set_yticks(ticks, [f"{t:g}x" for t in ticks])
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(ns)
    ax.set_xlabel("hosts pulling at once (N)")
    ax.set_ylabel("slowest host / ideal")
    ax.set_title(f"Slowest host against N ({label})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(slowest_path, dpi=100)
    plt.close(fig)
