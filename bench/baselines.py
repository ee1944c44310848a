"""The baselines of bench/netbench.py, on the same hosts (``swarm.Place``) as our system.

- BitTorrent: opentracker where our tracker was, a seeder where our origin was (one torrent made by mktorrent,
  1 MiB pieces like our origin's), one leecher per host, all started together; with aria2c, or with libtorrent
  (bench/_lt_peer.py, run by Debian's /usr/bin/python3). Each leecher's completion is written into a FIFO that
  the harness reads: by aria2c's ``--on-bt-download-complete`` hook, by _lt_peer.py itself.
- A central registry: Debian's docker-registry where our origin was; every host fetches the blob with one
  plain-HTTP ``curl`` of ``/v2/<name>/blobs/<digest>``, all started together.

On loopback (no namespaces) aria2c caps itself (``--max-overall-upload-limit``/``--max-overall-download-limit``),
libtorrent too (its ``upload_rate_limit``/``download_rate_limit``),
curl caps its download (``--limit-rate``), and the registry's upload goes through bench/_relay.py, capped.
"""

from __future__ import annotations

import filecmp
import os
import re
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from _daemons import Daemon, cpu_seconds
from _swarm import Place, free_port

AREA = "bench/blob"  # the registry repository the blob is pushed to
WAIT_TIMEOUT = 3600.0
_HOOK = """#!/bin/sh
# aria2c --on-bt-download-complete: one line per finished host, "<epoch seconds> <host>".
echo "$(date +%s.%N) $BT_HOST" > {fifo}
"""

ARIA2_COMMON = [
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--enable-peer-exchange=true",
    "--bt-tracker-interval=5",
    "--file-allocation=none",
    "--summary-interval=0",
    "--disable-ipv6=true",
    "--check-certificate=false",
]


def parse_info_hash(text: str) -> str:
    """The info hash from ``aria2c -S`` output."""
    m = re.search(r"^Info Hash:\s*([0-9a-f]{40})\s*$", text, re.MULTILINE)
    if m is None:
        raise ValueError("no 'Info Hash:' line in aria2c -S output")
    return m.group(1)


def opentracker_config(rootdir: str) -> str:
    """The Debian build is whitelist-only; the whitelist path is relative to the chroot (``rootdir``)."""
    return f"tracker.rootdir {rootdir}\naccess.whitelist /whitelist.txt\n"


def parse_done(lines: Sequence[str]) -> dict[str, float]:
    """``<epoch> <host>`` lines from the hook: each host's completion time (epoch seconds), first one kept."""
    done: dict[str, float] = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"not a completion line: {line!r}")
        done.setdefault(parts[1], float(parts[0]))
    return done


def parse_uploaded(log: str) -> int | None:
    """The ``uploaded=`` count of aria2c's last tracker announce in an info-level log (its event=stopped
    announce on a clean exit), or None."""
    found = re.findall(r"[?&]uploaded=(\d+)", log)
    return int(found[-1]) if found else None


def parse_curl(text: str) -> tuple[float, int]:
    """curl ``-w '%{time_total} %{size_download}'``: (seconds, bytes)."""
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"not curl's timing line: {text!r}")
    return float(parts[0]), int(float(parts[1]))


class Unfinished(RuntimeError):
    """Not every host had finished by the deadline."""

    def __init__(self, finished: int, count: int) -> None:
        super().__init__(f"only {finished} of {count} hosts finished in time")
        self.finished = finished
        self.count = count


def read_lines(fifo_fd: int, count: int, deadline: float, procs: Sequence[subprocess.Popen[bytes]]) -> list[str]:
    """``count`` lines from a FIFO (opened read-write, so it never sees end of file), or raises on the deadline
    or when one of ``procs`` exits first with an error."""
    buf = b""
    lines: list[str] = []
    with selectors.DefaultSelector() as sel:
        sel.register(fifo_fd, selectors.EVENT_READ)
        while len(lines) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unfinished(len(lines), count)
            if sel.select(min(left, 5.0)):
                buf += os.read(fifo_fd, 65536)
                *complete, buf = buf.split(b"\n")
                lines += [c.decode() for c in complete if c.strip()]
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed:
                raise RuntimeError(f"{len(failed)} clients failed (exit {failed[0].returncode}); see their logs")
    return lines


@dataclass
class Outcome:
    times: list[float]
    egress_bytes: int | None  # payload the seeder/registry sent, by its own count (None if unknown)
    cpu_seconds: float


class Torrent:
    """The blob as a torrent whose announce URL is the tracker at ``tracker``:``port``."""

    def __init__(self, work: str, blob: str, tracker: Place, port: int) -> None:
        self.dir = os.path.join(work, "bt")
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)  # opentracker chroots here and then runs as nobody
        self.blob = blob
        self.tracker, self.port = tracker, port
        self.path = os.path.join(self.dir, "blob.torrent")
        if os.path.exists(self.path):
            os.unlink(self.path)
        url = f"http://{tracker.ip}:{port}/announce"
        subprocess.run(
            ["mktorrent", "-a", url, "-l", "20", "-o", self.path, blob], check=True, stdout=subprocess.DEVNULL
        )
        shown = subprocess.run(["aria2c", "-S", self.path], capture_output=True, text=True, check=True).stdout
        with open(os.path.join(self.dir, "whitelist.txt"), "w") as f:
            f.write(parse_info_hash(shown) + "\n")
        self.config = os.path.join(self.dir, "opentracker.conf")
        with open(self.config, "w") as f:
            f.write(opentracker_config(self.dir))


LT_PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lt_peer.py")
LT_PYTHON = "/usr/bin/python3"  # Debian's, where python3-libtorrent imports


@dataclass(frozen=True)
class Peer:
    """How to run one BitTorrent client's seeder and leechers."""

    name: str
    ready: str  # in the seeder's output once the tracker answered its first announce
    seeder: Callable[[Torrent, str, int, list[str]], list[str]]  # (torrent, ip, port, limits) -> argv
    leecher: Callable[[Torrent, str, int, list[str], str, str, str], list[str]]  # (..., host, dir, hook) -> argv
    limits: Callable[[int | None, int, bool], list[str]]  # (own cap, peers, loopback) -> options
    uploaded: Callable[[str], int | None]  # the seeder's payload upload, from its log
    hook: str | None  # a completion hook script (aria2c) or None (the client writes into the FIFO itself)


def _aria2_limits(rate_bytes: int | None, peers: int, loopback: bool) -> list[str]:
    limits = (
        [f"--max-overall-upload-limit={rate_bytes}", f"--max-overall-download-limit={rate_bytes}"] if rate_bytes else []
    )
    # Every aria2c may connect to every other: its default of 55 is below the largest swarms here.
    return [*limits, f"--bt-max-peers={peers + 5}"]


def _aria2_seeder(torrent: Torrent, ip: str, port: int, limits: list[str]) -> list[str]:
    return [
        "aria2c",
        *ARIA2_COMMON,
        *limits,
        f"--listen-port={port}",
        "--console-log-level=warn",
        "--log=-",
        "--log-level=info",
        "--bt-seed-unverified=true",
        "--seed-ratio=0.0",
        "-d",
        os.path.dirname(torrent.blob),
        torrent.path,
    ]


def _aria2_leecher(
    torrent: Torrent, ip: str, port: int, limits: list[str], host: str, where: str, hook: str
) -> list[str]:
    return [
        "env",
        f"BT_HOST={host}",
        "aria2c",
        *ARIA2_COMMON,
        *limits,
        f"--listen-port={port}",
        "--console-log-level=warn",
        "--seed-ratio=0.0",
        "--seed-time=600",
        f"--on-bt-download-complete={hook}",
        "-d",
        where,
        torrent.path,
    ]


def _lt_limits(rate_bytes: int | None, peers: int, loopback: bool) -> list[str]:
    rate = [f"--rate={rate_bytes}"] if rate_bytes else []
    return [f"--peers={peers}", *rate, *(["--loopback"] if loopback else [])]


def _lt_seeder(torrent: Torrent, ip: str, port: int, limits: list[str]) -> list[str]:
    save = os.path.dirname(torrent.blob)
    return [LT_PYTHON, LT_PEER, "--seed", "--super-seed", f"--torrent={torrent.path}", f"--save={save}",
            f"--listen={ip}:{port}", *limits]  # fmt: skip


def _lt_leecher(torrent: Torrent, ip: str, port: int, limits: list[str], host: str, where: str, fifo: str) -> list[str]:
    return [LT_PYTHON, LT_PEER, f"--torrent={torrent.path}", f"--save={where}", f"--listen={ip}:{port}", *limits,
            f"--host={host}", f"--done={fifo}"]  # fmt: skip


def parse_lt_uploaded(log: str) -> int | None:
    """The ``payload uploaded <bytes>`` line bench/_lt_peer.py prints as it stops, or None."""
    found = re.findall(r"^payload uploaded (\d+)$", log, re.MULTILINE)
    return int(found[-1]) if found else None


ARIA2 = Peer("aria2c", "peers6 received", _aria2_seeder, _aria2_leecher, _aria2_limits, parse_uploaded, _HOOK)
LIBTORRENT = Peer("libtorrent", "announced", _lt_seeder, _lt_leecher, _lt_limits, parse_lt_uploaded, None)


def bt_run(
    peer: Peer,
    torrent: Torrent,
    seeder: Place,
    leechers: Sequence[Place],
    work: str,
    rate_bytes: int | None,
    ports: Sequence[int] | None = None,
    *,
    wait: float = WAIT_TIMEOUT,
) -> Outcome:
    """One swarm of ``peer`` (``ARIA2``, ``LIBTORRENT``): a fresh tracker and seeder, then every leecher at once;
    each leecher's seconds to complete.
    ``rate_bytes``: the clients' own caps (loopback mode), else none. ``ports``: the listen ports, seeder first
    (loopback mode, where every client shares one address), else 6881 everywhere. Raises ``Unfinished`` if not
    every leecher has finished ``wait`` seconds after the start."""
    run_dir = os.path.join(work, f"bt-{peer.name}-{len(leechers)}")
    os.makedirs(run_dir, exist_ok=True)
    loopback = ports is not None
    ports = list(ports) if ports else [6881] * (len(leechers) + 1)
    fifo = os.path.join(run_dir, "done.fifo")
    if os.path.exists(fifo):
        os.unlink(fifo)
    os.mkfifo(fifo)
    report_to = fifo
    if peer.hook is not None:
        report_to = os.path.join(run_dir, "hook.sh")
        with open(report_to, "w") as f:
            f.write(peer.hook.format(fifo=fifo))
        os.chmod(report_to, os.stat(report_to).st_mode | stat.S_IXUSR)
    limits = peer.limits(rate_bytes, len(leechers), loopback)
    t = torrent.tracker
    tracker_argv = ["opentracker", "-i", t.ip, "-p", str(torrent.port), "-P", str(torrent.port), "-f", torrent.config]
    daemons: list[Daemon] = []
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[object] = []
    fifo_fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    children_before = _children_cpu()
    try:
        # opentracker prints nothing when it is up; it binds before it drops root, so a started process that
        # is still alive after the seeder's announce got an answer (below) is a working tracker.
        daemons.append(
            Daemon(
                "opentracker",
                [*t.prefix, *tracker_argv, "-u", "nobody"],
                os.path.join(run_dir, "opentracker.log"),
                "",
                wait=False,
            )
        )
        seeder_argv = [*seeder.prefix, *peer.seeder(torrent, seeder.ip, ports[0], limits)]
        seed = Daemon(f"{peer.name} seeder", seeder_argv, os.path.join(run_dir, "seeder.log"), peer.ready, wait=False)
        daemons.append(seed)  # stopped below even if it never gets ready
        seed.wait_ready()
        start = time.time()
        started = time.monotonic()
        for i, place in enumerate(leechers):
            host = f"leecher-{i}"
            log = open(os.path.join(run_dir, f"{host}.log"), "wb")
            logs.append(log)
            where = os.path.join(run_dir, host)
            argv = [*place.prefix, *peer.leecher(torrent, place.ip, ports[i + 1], limits, host, where, report_to)]
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        lines = read_lines(fifo_fd, len(leechers), started + wait, procs)
        done = parse_done(lines)
        times = [done[f"leecher-{i}"] - start for i in range(len(leechers))]
        for i in (0, len(leechers) - 1):
            _same_file(torrent.blob, os.path.join(run_dir, f"leecher-{i}", os.path.basename(torrent.blob)))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        for log in logs:
            log.close()  # type: ignore[attr-defined]
        # The seeder first: SIGINT makes aria2c announce its upload as it leaves, and _lt_peer.py print it.
        for d in reversed(daemons):
            d.stop(signal.SIGINT if d.name.endswith("seeder") else signal.SIGTERM)
        os.close(fifo_fd)
        # Every process of this swarm was a child of ours and has been waited for: their CPU time is all here.
        cpu = _children_cpu() - children_before
        for i in range(len(leechers)):
            shutil.rmtree(os.path.join(run_dir, f"leecher-{i}"), ignore_errors=True)
    with open(os.path.join(run_dir, "seeder.log"), errors="replace") as f:
        uploaded = peer.uploaded(f.read())
    return Outcome(times, uploaded, cpu)


def _same_file(a: str, b: str) -> None:
    if not filecmp.cmp(a, b, shallow=False):
        raise RuntimeError(f"{b} differs from the blob")


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Registry:
    """docker-registry at ``place`` holding the blob; ``url`` is where the hosts fetch it from (through the
    capped relay on loopback)."""

    def __init__(self, work: str, place: Place, blob: str, digest: str, rate_bytes: int | None) -> None:
        self.dir = os.path.join(work, "registry")
        os.makedirs(self.dir, exist_ok=True)
        port = place.port(5000)
        addr = f"0.0.0.0:{port}" if place.own_host else f"127.0.0.1:{port}"
        config = os.path.join(self.dir, "config.yml")
        with open(config, "w") as f:
            f.write(
                "version: 0.1\nlog: {level: info, formatter: text}\n"
                f"storage: {{filesystem: {{rootdirectory: {self.dir}/data}}}}\n"
                f"http: {{addr: '{addr}'}}\n"
            )
        self.place, self.digest = place, digest
        self.daemons = [
            Daemon(
                "docker-registry",
                [*place.prefix, "docker-registry", "serve", config],
                os.path.join(self.dir, "registry.log"),
                "listening on",
            )
        ]
        try:
            self._push(place.local_url(port), blob, digest)
            serve_port = port
            if rate_bytes:
                serve_port = free_port()
                relay = [
                    sys.executable,
                    os.path.join(os.path.dirname(os.path.abspath(__file__)), "_relay.py"),
                    "--listen",
                    str(serve_port),
                    "--to",
                    f"127.0.0.1:{port}",
                    "--rate",
                    str(rate_bytes),
                ]
                self.daemons.append(Daemon("relay", relay, os.path.join(self.dir, "relay.log"), "relay listening"))
            self.url = f"http://{place.ip}:{serve_port}/v2/{AREA}/blobs/{digest}"
        except BaseException:
            self.stop()
            raise

    def _push(self, base: str, blob: str, digest: str) -> None:
        curl = [*self.place.prefix, "curl", "-sS", "--fail-with-body", "-H", "Expect:"]
        location = subprocess.run(
            [*curl, "-X", "POST", "-o", "/dev/null", "-w", "%header{location}", f"{base}/v2/{AREA}/blobs/uploads/"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if location.startswith("/"):
            location = base + location
        sep = "&" if "?" in location else "?"
        subprocess.run(
            [
                *curl,
                "-o",
                "/dev/null",
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/octet-stream",
                "-T",
                blob,
                f"{location}{sep}digest={digest}",
            ],
            check=True,
        )

    def cpu(self) -> float:
        return sum(cpu_seconds(d.proc.pid) for d in self.daemons)

    def pull(self, hosts: Sequence[Place], size: int, rate_bytes: int | None) -> Outcome:
        """Every host fetches the blob at once with curl; each one's seconds (curl's ``time_total``)."""
        limit = ["--limit-rate", str(rate_bytes)] if rate_bytes else []
        cpu_before, children_before = self.cpu(), _children_cpu()
        procs = [
            subprocess.Popen(
                [
                    *h.prefix,
                    "curl",
                    "-sS",
                    "-f",
                    *limit,
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{time_total} %{size_download}",
                    self.url,
                ],
                stdout=subprocess.PIPE,
            )
            for h in hosts
        ]
        times, received = [], 0
        try:
            for p in procs:
                out, _ = p.communicate()
                if p.returncode != 0:
                    raise RuntimeError(f"a curl of {self.url} failed (exit {p.returncode})")
                took, got = parse_curl(out.decode())
                if got != size:
                    raise RuntimeError(f"a curl of {self.url} got {got} bytes, not {size}")
                times.append(took)
                received += got
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        cpu = self.cpu() - cpu_before + _children_cpu() - children_before
        return Outcome(times, received, cpu)

    def stop(self) -> None:
        for d in reversed(self.daemons):
            d.stop()
