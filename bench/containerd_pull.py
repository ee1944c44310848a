"""containerd pulls of an upstream image: directly, through a cold agent, through a second agent; and what
an agent's 404 costs before containerd falls back.

    python bench/containerd_pull.py [--size 256MiB] [--runs 1] [--work DIR] [--out FILE]

One image with one uncompressed layer of ``--size`` seeded random bytes is pushed (skopeo,
``--preserve-digests``, untimed) to Debian's docker-registry, the upstream. A private containerd (its own
root, state and socket under the work directory) pulls it with ``ctr images pull --hosts-dir``; every pull
starts from an empty containerd (``ctr images rm --sync`` after each, checked). Each run starts a fresh
cluster (``bench/_fleet.py``: one origin, a tracker, a build-index, a proxy, two agents, separate ``twistd``
processes on loopback) whose agents mirror ``127.0.0.1:*`` (``upstream_namespaces``) and whose origin and
build-index read ``127.0.0.1_<port>/...`` from docker-registry (a ``registry`` backend, ``ns_prefix: true``).
Timed, in this order, the clock around ``ctr``:

- direct: hosts.toml with docker-registry as ``server`` only;
- agent, first host: hosts.toml naming agent 0, then docker-registry as ``server``; the agent's cache, the
  origin's and the build-index's are cold: the layer goes upstream -> origin -> agent 0;
- agent, second host: the same through agent 1 (the layer from the origin and agent 0, peer to peer);
- fallback: another image of the same size, named ``localhost:<port>/...`` (an ``ns`` no agent mirrors,
  and blobs the cluster never saw): through agent 0 (a 404 for the tag and for each blob, then
  docker-registry), beside a direct pull of it.

A pull through an agent during which containerd asked docker-registry itself (its access log shows
containerd's user agent) fell back: it is marked in the table. Goals: the first host within 1.2x of the
direct pull, the second host faster than it, the fallback under one second more than direct. Prints a
Markdown block; ``--out FILE`` appends it.
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

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _daemons import emit, free_port  # noqa: E402
from _fleet import Daemon, Fleet  # noqa: E402

from kraken.backends.upstream import host_component  # noqa: E402
from kraken.cli.image import write_layout  # noqa: E402
from kraken.config import parse_size  # noqa: E402

REPO = "bench/upstream"
FALLBACK = "bench/fallback"  # another image of the same size: no daemon of the cluster has any of its blobs
READY_TIMEOUT = 60.0
CONTAINERD = """\
version = 2
root = "{work}/root"
state = "{work}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"""
ASKED_BY_CONTAINERD = re.compile(r'"(?:GET|HEAD) /v2/\S+ HTTP/[0-9.]+" [0-9]{3} \S+ "[^"]*" "containerd')


def start_registry(work: str) -> tuple[int, Daemon]:
    """docker-registry on a free loopback port, storing under ``work/registry``; its access log kept by line."""
    port = free_port()
    config = {"version": 0.1, "log": {"level": "info"}, "http": {"addr": f"127.0.0.1:{port}"}}
    config["storage"] = {"filesystem": {"rootdirectory": f"{work}/registry"}}
    path = os.path.join(work, "registry.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    registry = Daemon("docker-registry", ["docker-registry", "serve", path], f"{work}/registry.log", "listening on")
    registry.wait_for("listening on", READY_TIMEOUT)
    return port, registry


class Ctr:
    """A private containerd and its ``ctr``."""

    def __init__(self, work: str) -> None:
        os.makedirs(work, exist_ok=True)
        self.socket_dir = tempfile.mkdtemp(prefix="ctrd-")  # a unix socket path must stay short
        self.socket = os.path.join(self.socket_dir, "containerd.sock")
        config = os.path.join(work, "config.toml")
        with open(config, "w") as f:
            f.write(CONTAINERD.format(work=work, socket=self.socket))
        argv = ["containerd", "--config", config]
        self.daemon = Daemon("containerd", argv, os.path.join(work, "containerd.log"), "successfully booted")
        self.daemon.wait_for("successfully booted", READY_TIMEOUT)

    def run(self, *args: str) -> str:
        done = subprocess.run(["ctr", "--address", self.socket, *args], check=True, capture_output=True, text=True)
        return done.stdout

    def pull(self, hosts: str, image: str) -> float:
        """Seconds of ``ctr images pull --hosts-dir``; the image is removed afterwards."""
        start = time.monotonic()
        self.run("images", "pull", "--hosts-dir", hosts, image)
        took = time.monotonic() - start
        self.run("images", "rm", "--sync", image)
        left = self.run("content", "ls", "-q").split()
        assert not left, f"containerd still holds {left} after removing {image}"
        return took

    def stop(self) -> None:
        self.daemon.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def hosts(directory: str, registry: str, server: str, mirror: str | None = None) -> str:
    """``directory/<registry>/hosts.toml``: ``mirror`` (an agent) first when given, then ``server``."""
    os.makedirs(os.path.join(directory, registry), exist_ok=True)
    text = f'server = "{server}"\n'
    if mirror:
        text += f'[host."http://{mirror}"]\n  capabilities = ["pull", "resolve"]\n'
    with open(os.path.join(directory, registry, "hosts.toml"), "w") as f:
        f.write(text)
    return directory


def fleet(work: str, port: int, answer_timeout: str) -> Fleet:
    component = host_component(f"127.0.0.1:{port}")
    assert component is not None
    registry = {"address": f"http://127.0.0.1:{port}", "ns_prefix": True, "tag_ttl": "1m"}
    backends = [{"namespace": re.escape(component) + "/.+", "registry": registry}]
    overrides = {
        "origin": {"backends": backends},
        "build-index": {"backends": backends},
        "agent": {"upstream_namespaces": ["127.0.0.1:*"], "answer_timeout": answer_timeout},
    }
    return Fleet(work, origins=1, replicas=1, agents=2, overrides=overrides)


def fell_back(registry: Daemon, start: int) -> bool:
    """Whether containerd asked docker-registry itself since log line ``start``."""
    return any(ASKED_BY_CONTAINERD.search(line) for line in registry.since(start))


def run_once(work: str, ctr: Ctr, registry: Daemon, port: int, answer_timeout: str) -> dict[str, float]:
    upstream, other = f"127.0.0.1:{port}", f"localhost:{port}"
    server = f"http://{upstream}"
    r: dict[str, float] = {}
    r["direct"] = ctr.pull(hosts(f"{work}/direct", upstream, server), f"{upstream}/{REPO}:v1")
    cluster = fleet(f"{work}/fleet", port, answer_timeout)
    try:
        for k, key in ((0, "first"), (1, "second")):
            mark = registry.mark()
            directory = hosts(f"{work}/agent-{k}", upstream, server, cluster.registry(k))
            r[key] = ctr.pull(directory, f"{upstream}/{REPO}:v1")
            r[f"{key}_fell_back"] = float(fell_back(registry, mark))
        image = f"{other}/{FALLBACK}:v1"
        r["fallback_direct"] = ctr.pull(hosts(f"{work}/direct", other, f"http://{other}"), image)
        r["fallback"] = ctr.pull(hosts(f"{work}/fallback", other, f"http://{other}", cluster.registry(0)), image)
    finally:
        cluster.stop()
    return r


def report(args: argparse.Namespace, runs: list[dict[str, float]]) -> str:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    direct, first, second = med("direct"), med("first"), med("second")
    fell = [
        f"{key} host fell back in {sum(int(r[f'{key}_fell_back']) for r in runs)} run(s)" for key in ("first", "second")
    ]
    lines = [
        f"### containerd pulls of an upstream image through the agents ({time.strftime('%Y-%m-%d')}, "
        f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()})",
        "",
        f"`python bench/containerd_pull.py --size {args.size} --runs {args.runs}` — one uncompressed layer, "
        f"median of {args.runs} run(s), a fresh cluster each run; {', '.join(fell)}.",
        "",
        "| layer | direct | agent, first host | first / direct (goal ≤ 1.2x) | agent, second host "
        "| second / direct (goal < 1x) |",
        "|---|---|---|---|---|---|",
        f"| {args.size} | {direct:.2f} s | {first:.2f} s | {first / direct:.2f}x | {second:.2f} s "
        f"| {second / direct:.2f}x |",
        "",
        "| layer | direct | through the agent's 404 | fallback cost (goal < 1 s) |",
        "|---|---|---|---|",
        f"| {args.size} | {med('fallback_direct'):.2f} s | {med('fallback'):.2f} s "
        f"| {med('fallback') - med('fallback_direct'):+.2f} s |",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="256MiB")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--answer-timeout", default="3s", help="the agents' answer_timeout (default: the product's)")
    p.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--out", default=None, help="append the Markdown block to this file")
    args = p.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="kraken-bench-")
    layouts = {REPO: os.path.join(work, "layout"), FALLBACK: os.path.join(work, "layout-fallback")}
    for repo, layout in layouts.items():
        write_layout(layout, tag="v1", layers=1, random_layer_size=parse_size(args.size), seed=f"{repo}-{args.size}")
    port, registry = start_registry(work)
    ctr = Ctr(os.path.join(work, "containerd"))
    runs = []
    try:
        for repo, layout in layouts.items():
            subprocess.run(
                ["skopeo", "copy", "-q", "--dest-tls-verify=false", "--preserve-digests", f"oci:{layout}:v1",
                 f"docker://127.0.0.1:{port}/{repo}:v1"],
                check=True,
            )  # fmt: skip
        for i in range(args.runs):
            shutil.rmtree(os.path.join(work, "fleet"), ignore_errors=True)
            r = run_once(os.path.join(work, "run"), ctr, registry, port, args.answer_timeout)
            runs.append(r)
            print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    finally:
        ctr.stop()
        registry.stop()
    emit(report(args, runs), args.out)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
