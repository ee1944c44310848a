"""Ring repair: how long the survivors take to fill an empty replacement, beside ``cp`` of the same bytes.

    python bench/repair.py [--count 100] [--size 16MiB] [--concurrency 2] [--work DIR] [--out FILE]

Three ``kraken-origin`` processes on loopback form a ring with replicas 2
(no backend). ``--count`` blobs of ``--size`` random bytes are uploaded, each
to the first member of its placement, which copies it to the second. The
member that holds the most blobs is SIGKILLed; once both survivors have
marked it unhealthy its store is moved away and an empty origin is started
at the same address (``repair.grace: 0s``, so its return starts a walk on
each survivor at once; ``repair.rate`` unlimited, ``repair.concurrency``
as given). Dirty pages are flushed (``os.sync``) before the replacement
starts.

Repair time runs from the replacement's ready line (its start-up is not
counted: under load a ``twistd`` start takes seconds) until both survivors
have logged the end of their walk ("repair: walk done"); the detection part
(until the first "repair: walking the store") is given apart. Every blob is
then checked on disk on both members of its placement (size and SHA-256).

Baseline: the blob directories the replacement received (data and sidecars), copied with one ``cp -r`` from
the survivors' stores into an empty directory on the same disk, after an
``os.sync`` and one untimed read of them (the survivors read them from the page cache too, having just
written and checked them); timed alone and with a ``sync`` after it, the median of three runs of each
(alternating: the disk of a shared machine makes single ``cp`` runs vary several-fold) (the origin's commit
renames a file it has written and hashed; whether its bytes reached the disk
by the end is up to the kernel, as for ``cp``). Prints a Markdown block;
``--out FILE`` appends it to FILE.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _daemons import emit, end, free_port, twistd, write_blob, write_config  # noqa: E402

from kraken.cluster.ring import Ring  # noqa: E402
from kraken.config import parse_size  # noqa: E402
from kraken.core import Digest  # noqa: E402

MIB = 1 << 20
WAIT = 600.0  # seconds: the backstop of every wait for a log line
NS = "bench-repair"


def origin_config(port: int, p2p: int, root: str, members: list[str], concurrency: int) -> str:
    hosts = ", ".join(f'"{m}"' for m in members)
    return f"""
listen_http: "tcp:{port}:interface=127.0.0.1"
store: {{root: "{root}"}}
p2p: {{listen: "tcp:{p2p}:interface=127.0.0.1"}}
cluster:
  hosts: [{hosts}]
  replicas: 2
  refresh_interval: 300ms
  health: {{fails: 2, passes: 1, timeout: 1s}}
repair: {{grace: 0s, concurrency: {concurrency}}}
"""


def upload(member: str, path: str, digest: str, size: int) -> None:
    """A client's upload: start, one PATCH of the whole file, commit (the origin copies it to the other replica)."""
    host, port = member.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    base = f"/namespace/{NS}/blobs/{digest}/uploads"
    conn.request("POST", base)
    started = conn.getresponse()
    started.read()
    assert started.status == 200, started.status
    url = f"{base}/{started.getheader('location')}"
    with open(path, "rb") as f:
        conn.request("PATCH", url, body=f, headers={"Content-Range": f"0-{size}", "Content-Length": str(size)})
        patched = conn.getresponse()
        patched.read()
    assert patched.status == 204, patched.status
    conn.request("PUT", url)
    committed = conn.getresponse()
    committed.read()
    assert committed.status == 201, committed.status
    conn.close()


def blob_file(root: str, digest: Digest) -> str:
    return os.path.join(root, "cache", digest.hex[:2], digest.hex[2:4], digest.hex, "data")


def wait_line(log: str, text: str, start: int) -> tuple[float, str]:
    """(when it was seen, the line): the first line of ``log`` from byte ``start`` on containing ``text``."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        with open(log, "rb") as f:
            f.seek(start)
            for raw in f.read().decode(errors="replace").splitlines():
                if text in raw:
                    return time.monotonic(), raw
        time.sleep(0.02)
    raise RuntimeError(f"no {text!r} in {log} after {WAIT:.0f}s")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cp_time(files: list[str], work: str, runs: int = 3) -> tuple[float, float]:
    """Median seconds of one ``cp -r`` of ``files`` (blob directories) into an empty directory, and of ``cp``
    then ``sync`` (``runs`` of each, alternating; the copy is removed and ``os.sync`` called before each)."""
    for name in files:  # read once, untimed: the origins read them from the page cache too
        for path in os.listdir(name):
            sha256_of(os.path.join(name, path))
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(runs):
        for then_sync in (False, True):
            dest = tempfile.mkdtemp(prefix="cp-", dir=work)
            os.sync()
            t0 = time.monotonic()
            subprocess.run(["cp", "-r", *files, dest], check=True)
            if then_sync:
                os.sync()
            times[then_sync].append(time.monotonic() - t0)
            shutil.rmtree(dest)
    return statistics.median(times[False]), statistics.median(times[True])


def run(args: argparse.Namespace, work: str) -> str:
    size = parse_size(args.size)
    http_ports, p2p_ports = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    members = [f"127.0.0.1:{p}" for p in http_ports]
    roots = [os.path.join(work, f"origin-{i}") for i in range(3)]
    ring = Ring(members, 2)
    logs = ["", "", ""]

    def start(i: int, run: int) -> subprocess.Popen[bytes]:
        """An origin whose output goes straight (unbuffered) to its log file, once its ready line is there."""
        name = f"origin-{i}-{run}"
        config = write_config(
            work, name, origin_config(http_ports[i], p2p_ports[i], roots[i], members, args.concurrency)
        )
        logs[i] = os.path.join(work, f"{name}.log")
        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
        with open(logs[i], "wb") as out:
            proc = subprocess.Popen(
                twistd("kraken-origin", config), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        wait_line(logs[i], "origin P2P listening", 0)
        return proc

    origins = [start(i, 0) for i in range(3)]
    try:
        digests = []
        for _ in range(args.count):
            path = os.path.join(work, "blob")
            digest = Digest.parse(write_blob(path, size))
            upload(ring.placement(digest)[0], path, str(digest), size)
            digests.append(digest)
        os.remove(os.path.join(work, "blob"))
        lost = max(range(3), key=lambda i: sum(members[i] in ring.placement(d) for d in digests))
        moved = [d for d in digests if members[lost] in ring.placement(d)]
        survivors = [i for i in range(3) if i != lost]
        marks = [os.path.getsize(logs[i]) for i in survivors]
        end(origins[lost], signal.SIGKILL)
        for i, mark in zip(survivors, marks, strict=True):
            wait_line(logs[i], f"cluster member {members[lost]} is unhealthy", mark)
        os.rename(roots[lost], roots[lost] + ".lost")
        marks = [os.path.getsize(logs[i]) for i in survivors]
        os.sync()
        origins[lost] = start(lost, 1)
        t0 = time.monotonic()  # its ready line was just seen (its start-up is not repair time)
        walks = [wait_line(logs[i], "repair: walking the store", m)[0] for i, m in zip(survivors, marks, strict=True)]
        dones = [wait_line(logs[i], "repair: walk done", m) for i, m in zip(survivors, marks, strict=True)]
        repair = max(t for t, _ in dones) - t0
        detect = min(walks) - t0
        for digest in digests:
            for member in ring.placement(digest):
                path = blob_file(roots[members.index(member)], digest)
                assert os.path.getsize(path) == size and sha256_of(path) == digest.hex, (digest, member)
        sources = [
            os.path.dirname(blob_file(roots[next(i for i in survivors if members[i] in ring.placement(d))], d))
            for d in moved
        ]
        cp_alone, cp_sync = cp_time(sources, work)
    finally:
        for proc in origins:
            end(proc)
    total = len(moved) * size
    walks = repair - detect
    lines = [
        f"### Ring repair: {len(moved)} x {args.size} blobs to an empty replacement (replicas 2, 3 origins)",
        "",
        f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; store and cp on the same disk; "
        f"repair.concurrency {args.concurrency}, rate unlimited; {args.count} blobs in the ring.",
        "",
        "| what | seconds | MiB/s | x cp |",
        "|---|---:|---:|---:|",
        f"| repair (replacement ready -> both walks done) | {repair:.2f} | {total / MIB / repair:.0f}"
        f" | {repair / cp_alone:.2f} |",
        f"| of which detection (until the first walk starts) | {detect:.2f} | | |",
        f"| of which the walks (first start -> last end) | {walks:.2f} | {total / MIB / walks:.0f}"
        f" | {walks / cp_alone:.2f} |",
        f"| cp -r of the same blobs (median of 3) | {cp_alone:.2f} | {total / MIB / cp_alone:.0f} | 1.00 |",
        f"| cp -r of the same blobs, then sync (median of 3) | {cp_sync:.2f} | {total / MIB / cp_sync:.0f}"
        f" | {cp_sync / cp_alone:.2f} |",
        "",
        "Survivors' summaries: " + "; ".join(line.split("] ", 1)[-1] for _, line in dones),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--size", default="16MiB")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--work", default=None, help="working directory (default: a new temporary one, removed)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="kraken-bench-repair-")
    os.makedirs(work, exist_ok=True)
    try:
        emit(run(args, work), args.out)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
