"""Where a swarm's time goes, piece by piece: the agents' ``p2p.piece_log`` lines, summed up.

    python bench/pieces.py WORK_DIR --digest sha256:... [--rate 20Mbit] [--piece 1MiB]

``WORK_DIR`` is a cluster's directory from ``bench/netbench.py --piece-log --work DIR`` (``DIR/ours``): each
daemon's YAML (its advertised address, from which its peer ID is derived) and each agent's log, where an agent
with ``p2p.piece_log`` writes one line per piece it received: from which peer, when it asked for it, when its
first and last byte came, when it was written. ``netbench --piece-log`` prints this summary after each of our
pulls. What it says, per piece delivered and per host:

- *wait*: from the request to the first byte (the request queued at the sender, behind its other uploads);
- *transfer*: first to last byte, against the piece's time at the cap (size / rate): a sender that sends to k
  connections at once gives each about 1/k of its link, so a piece takes k times as long to cross;
- *sender's uploads at once*: while a host sends, how many pieces it sends at the same time, on average;
- *uplink busy*: the share of the whole swarm's pull during which an agent was sending something: every agent
  receives the blob once, so an uplink that idles is capacity the swarm does not use;
- *hops*: how many transfers a piece made from the origin to the host (the origin's own pieces are 0);
- *downlink busy*: the share of a host's pull during which some piece was arriving; the rest it waited with
  nothing in flight (no peer had a piece it lacked, or its requests waited at busy senders).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _swarm import parse_rate

from kraken.config import parse_size
from kraken.p2p.config import P2PConfig

LINE = re.compile(
    r"piece (?P<index>\d+) of (?P<digest>\S+) from (?P<peer>[0-9a-f]+)(?: \(origin\))?: asked (?P<asked>[\d.]+) "
    r"first byte (?P<first>[\d.]+) last byte (?P<last>[\d.]+) written (?P<written>[\d.]+)"
)
ADVERTISE = re.compile(r"p2p: \{[^}]*advertise: '?([0-9.]+:\d+)'?")  # the P2P address, not the HTTP one


@dataclass(frozen=True)
class Delivery:
    host: str  # who received the piece
    index: int
    sender: str  # a host name, or the peer ID when no YAML names it
    asked: float
    first: float
    last: float
    written: float


def host_names(work: str) -> dict[str, str]:
    """Peer ID -> daemon name (``origin``, ``agent-3``), from the advertised address in each daemon's YAML (the
    default peer ID is derived from it, as ``P2PConfig.the_peer_id`` does)."""
    names = {}
    for name in os.listdir(work):
        if name.endswith(".yaml"):
            with open(os.path.join(work, name)) as f:
                found = ADVERTISE.search(f.read())
            if found:
                names[P2PConfig(advertise=found.group(1)).the_peer_id()] = name[: -len(".yaml")]
    return names


def parse(lines: Iterable[str], host: str, digest: str, names: dict[str, str]) -> list[Delivery]:
    out = []
    for line in lines:
        m = LINE.search(line)
        if m and m["digest"] == digest:
            times = (float(m["asked"]), float(m["first"]), float(m["last"]), float(m["written"]))
            out.append(Delivery(host, int(m["index"]), names.get(m["peer"], m["peer"]), *times))
    return out


def read_work(work: str, digest: str) -> list[Delivery]:
    names = host_names(work)
    deliveries = []
    for name in sorted(os.listdir(work)):
        if name.startswith("agent-") and name.endswith(".log"):
            with open(os.path.join(work, name), errors="replace") as f:
                deliveries += parse(f, name[: -len(".log")], digest, names)
    return deliveries


def union_length(intervals: Iterable[tuple[float, float]]) -> float:
    """The length of the union of ``[start, end]`` intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def hops(deliveries: Sequence[Delivery]) -> dict[tuple[str, int], int]:
    """(host, piece) -> transfers from the origin; a sender's copy counts once it has written it."""
    depth: dict[tuple[str, int], int] = {}
    for d in sorted(deliveries, key=lambda d: d.written):
        depth[(d.host, d.index)] = depth.get((d.sender, d.index), 0) + 1
    return depth


def quantiles(values: Sequence[float]) -> tuple[float, float, float]:
    """Median, 90th percentile and maximum."""
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], ordered[-1]


def summary(deliveries: Sequence[Delivery], piece: int, rate_bits: int) -> list[str]:
    """The Markdown table of where the time went (see the module docstring)."""
    if not deliveries:
        return ["(no piece_log lines: was the swarm run with --piece-log?)"]
    at_cap = piece * 8 / rate_bits
    by_host: dict[str, list[Delivery]] = defaultdict(list)
    by_sender: dict[str, list[Delivery]] = defaultdict(list)
    for d in deliveries:
        by_host[d.host].append(d)
        by_sender[d.sender].append(d)
    busy = []
    idle = []
    for ds in by_host.values():
        span = max(d.written for d in ds) - min(d.asked for d in ds)
        arriving = union_length((d.first, d.last) for d in ds)
        busy.append(arriving / span if span > 0 else 1.0)
        idle.append(span - arriving)
    start, end = min(d.asked for d in deliveries), max(d.written for d in deliveries)
    sending = {s: union_length((d.first, d.last) for d in ds) for s, ds in by_sender.items()}
    at_once = [sum(d.last - d.first for d in by_sender[s]) / t for s, t in sending.items() if t > 0]
    uplink = [t / (end - start) for s, t in sending.items() if s != "origin"] if end > start else []
    rows = [
        ("wait: request to first byte (s)", [d.first - d.asked for d in deliveries]),
        (f"transfer: first to last byte (s; {at_cap:.2f} s at the cap)", [d.last - d.first for d in deliveries]),
        ("last byte to written (s)", [d.written - d.last for d in deliveries]),
        ("hops from the origin", [float(h) for h in hops(deliveries).values()]),
        ("a sender's uploads at once, while it sends", at_once),
        ("an agent's uplink busy (share of the swarm's pull)", uplink),
        ("a host's downlink busy (share of its pull)", busy),
        ("a host's time with nothing arriving (s)", idle),
    ]
    out = [
        f"{len(deliveries)} pieces delivered to {len(by_host)} hosts by {len(by_sender)} senders "
        f"({sum(1 for d in deliveries if d.sender == 'origin')} by the origin)",
        "",
        "| per piece or host | median | 90th percentile | max |",
        "|---|---|---|---|",
    ]
    for label, values in rows:
        if values:
            m, p90, top = quantiles(values)
            out.append(f"| {label} | {m:.2f} | {p90:.2f} | {top:.2f} |")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", help="the cluster's directory: its daemons' YAML and logs")
    p.add_argument("--digest", required=True)
    p.add_argument("--rate", default="20Mbit", help="every host's cap, each way")
    p.add_argument("--piece", default="1MiB")
    args = p.parse_args()
    print("\n".join(summary(read_work(args.work, args.digest), parse_size(args.piece), parse_rate(args.rate))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
