"""skopeo push and pull through our proxy, beside Debian's docker-registry.

    python bench/push_pull.py [--sizes 256MiB,1GiB] [--runs 3] [--work DIR]

For each size, an OCI layout with one layer of that many seeded random bytes
is written once. Then, for each run and each system, fresh daemons are
started on free loopback ports with empty state:

- ours: kraken-origin, kraken-build-index and kraken-proxy as three separate
  ``twistd`` processes (so each one's peak RSS is its own);
- the baseline: ``docker-registry serve`` with a filesystem store.

and timed: ``skopeo copy --preserve-digests oci:... docker://...`` (push),
then ``skopeo copy docker://... dir:...`` (pull). Every pulled file is
checked against its sha256 name. Peak RSS is each process's VmHWM read from
/proc just before it is stopped. Prints a Markdown table; ``--out FILE``
also appends it to FILE.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _daemons import Daemon, free_port  # noqa: E402

from kraken.cli.image import write_layout  # noqa: E402
from kraken.config import parse_size  # noqa: E402


def start_ours(work: str) -> tuple[str, list[Daemon]]:
    ports = {name: free_port() for name in ("proxy", "origin", "build_index")}
    origin_url = f"http://127.0.0.1:{ports['origin']}"
    index_url = f"http://127.0.0.1:{ports['build_index']}"
    configs = {
        "origin": f"listen_http: 'tcp:{ports['origin']}:interface=127.0.0.1'\nstore: {{root: {work}/origin}}\n",
        "build-index": (
            f"listen_http: 'tcp:{ports['build_index']}:interface=127.0.0.1'\n"
            f"origin: '{origin_url}'\ndatabase: {work}/build-index/tags.db\n"
        ),
        "proxy": (
            f"listen_http: 'tcp:{ports['proxy']}:interface=127.0.0.1'\n"
            f"origin: '{origin_url}'\nbuild_index: '{index_url}'\nuploads: {{root: {work}/proxy/uploads}}\n"
        ),
    }
    daemons = []
    for name, text in configs.items():
        path = os.path.join(work, f"{name}.yaml")
        with open(path, "w") as f:
            f.write(text)
        argv = [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=", f"kraken-{name}"]
        argv += ["--config", path]
        daemons.append(Daemon(name, argv, os.path.join(work, f"{name}.log"), "listening"))
    return f"127.0.0.1:{ports['proxy']}", daemons


def start_registry(work: str) -> tuple[str, list[Daemon]]:
    port = free_port()
    path = os.path.join(work, "registry.yaml")
    with open(path, "w") as f:
        f.write(
            "version: 0.1\nlog: {level: info}\n"
            f"storage: {{filesystem: {{rootdirectory: {work}/registry}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: 127.0.0.1:{port}}}\n"
        )
    log = os.path.join(work, "registry.log")
    d = Daemon("docker-registry", ["docker-registry", "serve", path], log, "listening on")
    return f"127.0.0.1:{port}", [d]


def skopeo(*args: str) -> float:
    start = time.monotonic()
    subprocess.run(["skopeo", "copy", "-q", *args], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def verify_dir(path: str) -> None:
    for name in os.listdir(path):
        if len(name) == 64:
            h = hashlib.sha256()
            with open(os.path.join(path, name), "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            if h.hexdigest() != name:
                raise RuntimeError(f"pulled blob {name} has the wrong content")


def run_once(system: str, layout: str, work: str) -> dict[str, float]:
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    registry, daemons = (start_ours if system == "ours" else start_registry)(work)
    try:
        ref = f"docker://{registry}/bench/img:v1"
        push = skopeo("--preserve-digests", "--dest-tls-verify=false", f"oci:{layout}:v1", ref)
        out = os.path.join(work, "pulled")
        pull = skopeo("--src-tls-verify=false", ref, f"dir:{out}")
        verify_dir(out)
        rss = {f"rss_{d.name}": float(d.peak_rss()) for d in daemons}
    finally:
        for d in daemons:
            d.stop()
    return {"push": push, "pull": pull, **rss}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256MiB,1GiB")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--out", default=None, help="append the Markdown table to this file")
    args = p.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="kraken-bench-")
    lines = [
        f"### skopeo push/pull, one-layer image ({time.strftime('%Y-%m-%d')}, "
        f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()})",
        "",
        f"`python bench/push_pull.py --sizes {args.sizes} --runs {args.runs}` — median of {args.runs} runs, "
        "fresh daemons and empty state for every run.",
        "",
        "| layer | ours push | registry push | push ratio | ours pull | registry pull | pull ratio "
        "| peak RSS origin / build-index / proxy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size_text in args.sizes.split(","):
        size = parse_size(size_text)
        layout = os.path.join(work, f"layout-{size_text}")
        if not os.path.exists(os.path.join(layout, "index.json")):
            write_layout(layout, tag="v1", layers=1, random_layer_size=size, seed=size_text)
        results: dict[str, list[dict[str, float]]] = {"ours": [], "registry": []}
        for i in range(args.runs):
            for system in ("ours", "registry"):
                r = run_once(system, layout, os.path.join(work, f"run-{system}"))
                results[system].append(r)
                print(f"{size_text} run {i + 1} {system}: push {r['push']:.2f}s pull {r['pull']:.2f}s", flush=True)

        def med(system: str, key: str, results: dict[str, list[dict[str, float]]] = results) -> float:
            return statistics.median(r[key] for r in results[system])

        def mb(x: float) -> str:
            return f"{x / 2**20:.0f}"

        peak = {k: max(r[k] for r in results["ours"]) for k in results["ours"][0] if k.startswith("rss_")}
        rss = " / ".join(mb(peak[f"rss_{n}"]) for n in ("origin", "build-index", "proxy")) + " MiB"
        lines.append(
            f"| {size_text} | {med('ours', 'push'):.2f} s | {med('registry', 'push'):.2f} s "
            f"| {med('ours', 'push') / med('registry', 'push'):.2f}x "
            f"| {med('ours', 'pull'):.2f} s | {med('registry', 'pull'):.2f} s "
            f"| {med('ours', 'pull') / med('registry', 'pull'):.2f}x | {rss} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + table)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
