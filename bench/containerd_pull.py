"""containerd pulls of an upstream image: directly, through a cold agent, through a second agent; and what
an agent's 404 costs before containerd falls back.

    python bench/containerd_pull.py [--size 256MiB] [--runs 1] [--upstream-rate 1Gbit] [--stream]
                                    [--stream-window PIECES] [--work DIR] [--out FILE]

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
- warm: agent 1 again, the layer now in its cache: containerd's own share of a pull (writing the layer into its
  content store, checking it, unpacking it), with no P2P and no upstream;
- fallback: another image of the same size, named ``localhost:<port>/...`` (an ``ns`` no agent mirrors,
  and blobs the cluster never saw): through agent 0 (a 404 for the tag and for each blob, then
  docker-registry), beside a direct pull of it.

With ``--upstream-rate``, docker-registry runs in a network namespace of its own whose link is capped at that rate
both ways (tbf, ``bench/netns.py``), as a registry across a WAN would be; the cluster and containerd stay on this
host's loopback, where the agents' peer-to-peer traffic is not capped. Without it, docker-registry is on loopback
too: the direct pull then has the fastest source there is, and a second host cannot beat it (it adds the agent's
hops to the same uncapped bytes). The fallback image is then named by a second address of that namespace.
With ``--stream``, the agents have ``stream_from_origins``: the first host's layer is streamed from the origin
while the origin still fetches it (upstream -> origin -> agent 0 -> containerd in one pipeline).

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
from _swarm import parse_rate  # noqa: E402
from netns import Testbed  # noqa: E402

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


#: The fallback image's registry name in ``--upstream-rate`` mode: a second address of docker-registry's namespace.
SECOND_ADDRESS = "10.99.0.100"


def start_registry(work: str, testbed: Testbed | None) -> tuple[int, Daemon]:
    """docker-registry on a free port, storing under ``work/registry``; its access log kept by line. On loopback,
    or in the testbed's host 1 (every address of it) when given."""
    port = free_port()
    bind = "127.0.0.1" if testbed is None else "0.0.0.0"
    config = {"version": 0.1, "log": {"level": "info"}, "http": {"addr": f"{bind}:{port}"}}
    config["storage"] = {"filesystem": {"rootdirectory": f"{work}/registry"}}
    path = os.path.join(work, "registry.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    argv = ["docker-registry", "serve", path]
    if testbed is not None:
        host = testbed.host(1)
        subprocess.run(["ip", "-n", host.namespace, "addr", "add", f"{SECOND_ADDRESS}/24", "dev", "eth0"], check=True)
        argv = host.exec(argv)
    registry = Daemon("docker-registry", argv, f"{work}/registry.log", "listening on")
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
        done = subprocess.run(["ctr", "--address", self.socket, *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
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
    # containerd 1.6 refuses a hosts.toml without a host table ("invalid `host` tree") and falls back to its
    # defaults, which are plain HTTP only for loopback: the server is named as a host too when no mirror is.
    host = f"http://{mirror}" if mirror else server
    text += f'[host."{host}"]\n  capabilities = ["pull", "resolve"]\n'
    with open(os.path.join(directory, registry, "hosts.toml"), "w") as f:
        f.write(text)
    return directory


def fleet(work: str, upstream: str, answer_timeout: str, stream: bool, window: int | None = None) -> Fleet:
    component = host_component(upstream)
    assert component is not None
    registry = {"address": f"http://{upstream}", "ns_prefix": True, "tag_ttl": "1m"}
    backends = [{"namespace": re.escape(component) + "/.+", "registry": registry}]
    overrides = {
        "origin": {"backends": backends},
        "build-index": {"backends": backends},
        "agent": {
            "upstream_namespaces": [upstream.rsplit(":", 1)[0] + ":*"],
            "answer_timeout": answer_timeout,
            **({"p2p": {"stream_window": window}} if window is not None else {}),
        },
    }
    return Fleet(work, origins=1, replicas=1, agents=2, overrides=overrides, stream_from_origins=stream)


def fell_back(registry: Daemon, start: int) -> bool:
    """Whether containerd asked docker-registry itself since log line ``start``."""
    return any(ASKED_BY_CONTAINERD.search(line) for line in registry.since(start))


def run_once(
    work: str,
    ctr: Ctr,
    registry: Daemon,
    upstream: str,
    other: str,
    answer_timeout: str,
    stream: bool,
    window: int | None,
) -> dict[str, float]:
    """One run: ``upstream`` (host:port) is docker-registry, ``other`` another name of it that no agent mirrors."""
    server = f"http://{upstream}"
    r: dict[str, float] = {}
    r["direct"] = ctr.pull(hosts(f"{work}/direct", upstream, server), f"{upstream}/{REPO}:v1")
    cluster = fleet(f"{work}/fleet", upstream, answer_timeout, stream, window)
    try:
        for k, key in ((0, "first"), (1, "second")):
            mark = registry.mark()
            directory = hosts(f"{work}/agent-{k}", upstream, server, cluster.registry(k))
            r[key] = ctr.pull(directory, f"{upstream}/{REPO}:v1")
            r[f"{key}_fell_back"] = float(fell_back(registry, mark))
        # containerd alone: the layer already in the second agent's cache (no P2P, no upstream), containerd cold.
        r["warm"] = ctr.pull(hosts(f"{work}/agent-1", upstream, server, cluster.registry(1)), f"{upstream}/{REPO}:v1")
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
        f"`python bench/containerd_pull.py --size {args.size} --runs {args.runs}"
        + (f" --upstream-rate {args.upstream_rate}" if args.upstream_rate else "")
        + (" --stream" if args.stream else "")
        + (f" --stream-window {args.stream_window}" if args.stream_window is not None else "")
        + "` — one uncompressed layer, "
        + (
            f"docker-registry behind a {args.upstream_rate} link (tbf, both ways), "
            if args.upstream_rate
            else "docker-registry on loopback, "
        )
        + f"median of {args.runs} run(s), a fresh cluster each run; {', '.join(fell)}.",
        "",
        "| layer | direct | agent, first host | first / direct (goal ≤ 1.2x) | agent, second host "
        "| second / direct (goal < 1x) |",
        "|---|---|---|---|---|---|",
        f"| {args.size} | {direct:.2f} s | {first:.2f} s | {first / direct:.2f}x | {second:.2f} s "
        f"| {second / direct:.2f}x |",
        "",
        f"containerd's own share: a pull through an agent that holds the layer already takes {med('warm'):.2f} s "
        f"({med('warm') / direct:.2f}x of direct).",
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
    p.add_argument(
        "--stream", action="store_true", help="agents stream a blob the origin is fetching (stream_from_origins)"
    )
    p.add_argument(
        "--stream-window",
        type=int,
        default=None,
        help="the agents' p2p.stream_window (pieces; default: the agents' own, 8; 0: off)",
    )
    p.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--out", default=None, help="append the Markdown block to this file")
    p.add_argument(
        "--upstream-rate", default=None, help="put docker-registry behind a link capped at this rate (1Gbit)"
    )
    args = p.parse_args()
    if args.upstream_rate is None:
        return measure(args, None)
    with Testbed(1, parse_rate(args.upstream_rate), prefix="kbctr").up() as testbed:
        return measure(args, testbed)


def measure(args: argparse.Namespace, testbed: Testbed | None) -> int:
    work = args.work or tempfile.mkdtemp(prefix="kraken-bench-")
    layouts = {REPO: os.path.join(work, "layout"), FALLBACK: os.path.join(work, "layout-fallback")}
    for repo, layout in layouts.items():
        write_layout(layout, tag="v1", layers=1, random_layer_size=parse_size(args.size), seed=f"{repo}-{args.size}")
    port, registry = start_registry(work, testbed)
    address = "127.0.0.1" if testbed is None else testbed.host(1).ip
    upstream, other = f"{address}:{port}", (f"localhost:{port}" if testbed is None else f"{SECOND_ADDRESS}:{port}")
    ctr = Ctr(os.path.join(work, "containerd"))
    runs = []
    try:
        for repo, layout in layouts.items():
            subprocess.run(
                ["skopeo", "copy", "-q", "--dest-tls-verify=false", "--preserve-digests", f"oci:{layout}:v1",
                 f"docker://{upstream}/{repo}:v1"],
                check=True,
            )  # fmt: skip
        for i in range(args.runs):
            shutil.rmtree(os.path.join(work, "run"), ignore_errors=True)  # every run starts cold
            r = run_once(
                os.path.join(work, "run"), ctr, registry, upstream, other, args.answer_timeout, args.stream,
                args.stream_window,
            )  # fmt: skip
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
