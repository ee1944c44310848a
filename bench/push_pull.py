"""skopeo push and pull through our proxy, beside Debian's docker-registry.

    python bench/push_pull.py [--sizes 256MiB,1GiB] [--runs 3] [--secure off|on|both] [--work DIR]

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

``--secure on`` runs ours with TLS on every link (kraken/cli/certs.py's
development CA in the run's directory): mutual TLS between proxy,
build-index and origin, TLS on the proxy with HTTP Basic auth (an htpasswd
file); skopeo pushes with ``--dest-creds`` and ``--dest-cert-dir`` and pulls
with ``--src-creds`` and ``--src-cert-dir``. ``--secure both`` runs ours plain
and secure in every run, side by side, and adds a table of the two with the
ratio secure / plain for push and pull. The baseline stays docker-registry
over plain HTTP.
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
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _daemons import BenchTLS, Daemon, cpu_seconds, free_port  # noqa: E402

from kraken.cli.image import write_layout  # noqa: E402
from kraken.config import parse_size  # noqa: E402


def ours_configs(work: str, ports: dict[str, int], tls: BenchTLS | None = None) -> dict[str, str]:
    """The three daemons' YAML; with ``tls``, TLS on every link (mutual inside) and Basic auth on the proxy."""
    scheme = "https" if tls else "http"
    origin_url = f"{scheme}://127.0.0.1:{ports['origin']}"
    index_url = f"{scheme}://127.0.0.1:{ports['build_index']}"
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
    if tls:
        configs["origin"] += f"tls: {tls.block()}\n"  # one origin: no cluster block
        configs["build-index"] += f"tls: {tls.block()}\n"
        configs["proxy"] += f"tls: {tls.block(mutual=False)}\nauth: {{htpasswd: '{tls.htpasswd}'}}\n"
    return configs


def start_ours(work: str, tls: BenchTLS | None = None) -> tuple[str, list[Daemon]]:
    ports = {name: free_port() for name in ("proxy", "origin", "build_index")}
    configs = ours_configs(work, ports, tls)
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


def skopeo_options(tls: BenchTLS | None) -> tuple[list[str], list[str]]:
    """skopeo's options to push and to pull: plain HTTP, or the CA's directory and the proxy's credentials."""
    if tls is None:
        return ["--dest-tls-verify=false"], ["--src-tls-verify=false"]
    creds = ":".join(tls.credentials)
    return ([f"--dest-creds={creds}", f"--dest-cert-dir={tls.trust_dir}"],
            [f"--src-creds={creds}", f"--src-cert-dir={tls.trust_dir}"])  # fmt: skip


def run_once(system: str, layout: str, work: str) -> dict[str, float]:
    """One push and pull; ``system``: ours, ours-tls (``--secure``) or registry."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    tls = BenchTLS.make(work) if system == "ours-tls" else None
    registry, daemons = start_registry(work) if system == "registry" else start_ours(work, tls)
    try:
        ref = f"docker://{registry}/bench/img:v1"
        push_options, pull_options = skopeo_options(tls)
        cpu = -sum(cpu_seconds(d.proc.pid) for d in daemons)
        push = skopeo("--preserve-digests", *push_options, f"oci:{layout}:v1", ref)
        cpu += sum(cpu_seconds(d.proc.pid) for d in daemons)  # the daemons' CPU-seconds spent on the push
        out = os.path.join(work, "pulled")
        pull = skopeo(*pull_options, ref, f"dir:{out}")
        verify_dir(out)
        rss = {f"rss_{d.name}": float(d.peak_rss()) for d in daemons}
    finally:
        for d in daemons:
            d.stop()
    return {"push": push, "pull": pull, "push_cpu": cpu, **rss}


SYSTEMS = {"off": ("ours", "registry"), "on": ("ours-tls", "registry"), "both": ("ours", "ours-tls", "registry")}


def secure_rows(size_text: str, med: Callable[[str, str], float]) -> list[str]:
    """The ``--secure both`` table's row for one size: plain, secure and secure / plain."""
    push, pull = (med("ours-tls", k) / med("ours", k) for k in ("push", "pull"))
    return [
        f"| {size_text} | {med('ours', 'push'):.2f} s | {med('ours-tls', 'push'):.2f} s | {push:.2f}x "
        f"| {med('ours', 'pull'):.2f} s | {med('ours-tls', 'pull'):.2f} s | {pull:.2f}x |"
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256MiB,1GiB")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--out", default=None, help="append the Markdown table to this file")
    p.add_argument("--secure", choices=("off", "on", "both"), default="off",
                   help="ours with TLS and auth (on), or plain and secure side by side (both)")  # fmt: skip
    args = p.parse_args()
    systems = SYSTEMS[args.secure]
    ours = "ours-tls" if args.secure == "on" else "ours"
    secure = [
        "",
        "Ours plain vs ours with TLS on every link (mutual inside) and Basic auth on the proxy, same runs:",
        "",
        "| layer | plain push | TLS+auth push | push secure/plain | plain pull | TLS+auth pull | pull secure/plain |",
        "|---|---|---|---|---|---|---|",
    ]
    work = args.work or tempfile.mkdtemp(prefix="kraken-bench-")
    lines = [
        f"### skopeo push/pull, one-layer image ({time.strftime('%Y-%m-%d')}, "
        f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()})",
        "",
        f"`python bench/push_pull.py --sizes {args.sizes} --runs {args.runs} --secure {args.secure}` — "
        f"median of {args.runs} runs, "
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
        results: dict[str, list[dict[str, float]]] = {system: [] for system in systems}
        for i in range(args.runs):
            for system in systems:
                r = run_once(system, layout, os.path.join(work, f"run-{system}"))
                results[system].append(r)
                print(
                    f"{size_text} run {i + 1} {system}: push {r['push']:.2f}s (daemons' CPU {r['push_cpu']:.2f}s)"
                    f" pull {r['pull']:.2f}s",
                    flush=True,
                )

        def med(system: str, key: str, results: dict[str, list[dict[str, float]]] = results) -> float:
            return statistics.median(r[key] for r in results[system])

        def mb(x: float) -> str:
            return f"{x / 2**20:.0f}"

        peak = {k: max(r[k] for r in results[ours]) for k in results[ours][0] if k.startswith("rss_")}
        rss = " / ".join(mb(peak[f"rss_{n}"]) for n in ("origin", "build-index", "proxy")) + " MiB"
        lines.append(
            f"| {size_text} | {med(ours, 'push'):.2f} s | {med('registry', 'push'):.2f} s "
            f"| {med(ours, 'push') / med('registry', 'push'):.2f}x "
            f"| {med(ours, 'pull'):.2f} s | {med('registry', 'pull'):.2f} s "
            f"| {med(ours, 'pull') / med('registry', 'pull'):.2f}x | {rss} |"
        )
        if args.secure == "both":
            secure += secure_rows(size_text, med)
    table = "\n".join(lines + (secure if args.secure == "both" else [])) + "\n"
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + table)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
