"""Replication lag between two clusters, beside ``skopeo copy`` between their proxies.

    python bench/replication.py [--size 1GiB] [--runs 3] [--rate SIZE] [--work DIR] [--out FILE]

Two clusters on loopback, each its own processes (``bench/_fleet.py``: an origin, a tracker, a
build-index and a proxy; no agents): cluster A's build-index has one remote, B, for the repositories
``bench/repl.*``. An OCI image with one layer of ``--size`` random bytes (uncompressed, so that no
side recompresses it) is pushed once to A's proxy by skopeo as ``bench/plain:v1`` (no rule matches:
untimed setup), and as ``bench/repl:seed`` (replicated at once, untimed: A's build-index then holds
the manifest's record for ``bench/repl``, as after any push there). Then, ``--runs`` times, each
measurement against a cluster B wiped and restarted (its origin store, tag database and proxy uploads
deleted, so that every byte crosses again):

- replication: the clock runs from the ``PUT`` of the tag ``bench/repl:run-N`` -> the image's
  manifest digest on A's build-index (the moment a push's tag is accepted in A) until B's
  build-index logs that it stored the replicated tag (B then serves it: every blob is on B's
  origin, checked there). The tag is then fetched from B's proxy (untimed) to check it is pullable.
- skopeo: ``skopeo copy --preserve-digests`` of ``bench/plain:v1`` from A's proxy to B's proxy, the
  clock around the process.

The two alternate within a run (which goes first alternates too). Dirty pages are flushed
(``os.sync``) before every measurement. Prints a Markdown block (per-run seconds, medians, MiB/s,
the ratio replication / skopeo: the goal is at most 1.0x; the peak RSS of A's build-index, through
which every replicated byte streams); ``--out FILE`` appends it to FILE.
``--rate`` sets the remote's bandwidth limit (``remotes[].rate``) to show it holds.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _daemons import memory  # noqa: E402
from _fleet import Fleet  # noqa: E402

from kraken.cli.image import write_layout  # noqa: E402
from kraken.config import parse_size  # noqa: E402

TIMEOUT = 3600.0  # seconds; a backstop for one measurement
ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def wipe(b: Fleet) -> None:
    """Stop B, delete its state, start it again on the same ports."""
    for daemon in reversed(list(b.daemons.values())):
        daemon.stop()
    for path in (b.root("origin-0"), b.root("proxy-uploads")):
        shutil.rmtree(path, ignore_errors=True)
    for name in ("tags.db", "tags.db-wal", "tags.db-shm"):
        if os.path.exists(os.path.join(b.work, name)):
            os.remove(os.path.join(b.work, name))
    for name in b.configs:
        b.restart(name)


def replicate(a: Fleet, b: Fleet, tag: str, digest: str) -> float:
    index = b["build-index"]
    start_line = index.mark()
    request = urllib.request.Request(
        f"{a.build_index_url}/repositories/bench/repl/tags/{tag}", data=digest.encode(), method="PUT"
    )
    os.sync()
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=60) as r:
        assert r.status in (200, 201), r.status
    index.wait_for(re.compile(rf"tag bench/repl:{tag} -> .*replicated from"), TIMEOUT, start_line)
    elapsed = time.monotonic() - started
    pulled = urllib.request.Request(
        f"http://{b.proxy}/v2/bench/repl/manifests/{tag}", method="HEAD", headers={"Accept": ACCEPT}
    )
    with urllib.request.urlopen(pulled, timeout=60) as r:
        assert r.headers["Docker-Content-Digest"] == digest, r.headers
    return elapsed


def skopeo_copy(a: Fleet, b: Fleet) -> float:
    os.sync()
    started = time.monotonic()
    subprocess.run(
        ["skopeo", "copy", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
         f"docker://{a.proxy}/bench/plain:v1", f"docker://{b.proxy}/bench/plain:v1"],
        check=True, capture_output=True, timeout=TIMEOUT,
    )  # fmt: skip
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", default=None, help="remotes[].rate of A's remote (default: unlimited)")
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    size = parse_size(args.size)
    work = args.work or tempfile.mkdtemp(prefix="kraken-bench-replication-")
    os.makedirs(work, exist_ok=True)

    layout = write_layout(os.path.join(work, "layout"), layers=1, random_layer_size=size, seed=f"bench-{time.time()}")
    b = Fleet(os.path.join(work, "b"), origins=1, replicas=1, agents=0)
    remote = {"name": "b", "repositories": "bench/repl.*", "build_index": b.build_index_url, "origins": b.origin_urls}
    if args.rate:
        remote["rate"] = args.rate
    overrides = {"build-index": {"remotes": [remote], "replication": {"backoff_min": "100ms", "backoff_max": "1s"}}}
    a = Fleet(os.path.join(work, "a"), origins=1, replicas=1, agents=0, overrides=overrides)
    results: dict[str, list[float]] = {"replication": [], "skopeo": []}
    try:
        mark = a["build-index"].mark()
        for name in ("bench/repl:seed", "bench/plain:v1"):  # the records of bench/repl go to B with its tags
            subprocess.run(
                ["skopeo", "copy", "--preserve-digests", "--dest-tls-verify=false", f"oci:{layout.path}:v1",
                 f"docker://{a.proxy}/{name}"],
                check=True, capture_output=True, timeout=TIMEOUT,
            )  # fmt: skip
        a["build-index"].wait_for(re.compile(r"replication of bench/repl:seed to b -> \S+ done"), TIMEOUT, mark)
        for run in range(args.runs):
            order = ["replication", "skopeo"] if run % 2 == 0 else ["skopeo", "replication"]
            for what in order:
                wipe(b)
                if what == "replication":
                    seconds = replicate(a, b, f"run-{run}", layout.manifest.digest)
                else:
                    seconds = skopeo_copy(a, b)
                results[what].append(seconds)
                print(f"run {run + 1}: {what} {seconds:.2f} s", file=sys.stderr, flush=True)
        errors = {**a.errors(), **{f"b/{k}": v for k, v in b.errors().items()}}
        peak = memory(a["build-index"].proc.pid, "VmHWM")
    finally:
        b.stop()
        a.stop()
    report = render(args, size, results, errors, peak)
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write(report + "\n")
    return 0


def render(
    args: argparse.Namespace, size: int, results: dict[str, list[float]], errors: dict[str, list[str]], peak: int
) -> str:
    mib = size / (1 << 20)
    med = {k: statistics.median(v) for k, v in results.items()}
    lines = [
        f"### Replication lag, one {args.size} layer, A -> B ({platform.node()}, {os.cpu_count()} CPUs, "
        f"{args.runs} runs{f', rate {args.rate}/s' if args.rate else ''})",
        "",
        "| | " + " | ".join(f"run {i + 1}" for i in range(args.runs)) + " | median | MiB/s |",
        "|---|" + "---|" * args.runs + "---|---|",
    ]
    for what, label in (("replication", "replication (tag in A -> tag in B)"), ("skopeo", "skopeo copy A -> B")):
        runs = " | ".join(f"{s:.2f} s" for s in results[what])
        lines.append(f"| {label} | {runs} | {med[what]:.2f} s | {mib / med[what]:.0f} |")
    ratio = med["replication"] / med["skopeo"]
    lines += ["", f"Ratio replication / skopeo (medians): **{ratio:.2f}x** (goal <= 1.0x)."]
    lines.append(f"Peak RSS of A's build-index (which streams every byte): {peak / (1 << 20):.0f} MiB.")
    lines.append("Unhandled errors or tracebacks in the daemons: " + (", ".join(errors) if errors else "none") + ".")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
