"""Write-back to S3 and fetch on miss from S3 (moto), beside boto3 doing the same transfers.

    python bench/writeback.py [--count 100] [--small 16MiB] [--large 1GiB] [--runs 3] [--moto-spool]
                               [--work DIR] [--out FILE]

Three transfers, each timed for a kraken-origin (a ``twistd`` process with
an S3 backend) and for boto3 alone in this process, against a moto server
started afresh for every upload measurement (one per run for the downloads),
so every measurement starts from an empty bucket:

1. ``--count`` blobs of ``--small`` random bytes. Ours: the blobs are first
   pushed to the origin's upload API while its S3 endpoint is a closed port
   (the write-back tasks queue up and fail), the origin is stopped and
   started again against moto, and the clock runs from its "tasks pending"
   log line (every pending task is due at start) until it has logged an
   upload for every blob. boto3: ``upload_file`` of the same files from a
   pool of as many threads as the origin's ``writeback.concurrency`` (4),
   one PUT each as ours; and with boto3's defaults (one ``TransferManager``
   given every file: 10 threads, multipart above 8 MiB in 8 MiB parts).
2. One blob of ``--large`` bytes, the same way. boto3 with our part size and
   concurrency (64 MiB parts, 10 at a time), and with its defaults.
3. Fetch on miss: the ``--large`` blob is put in the bucket only; an origin
   with an empty cache is asked for it over HTTP (202 while it fetches,
   asked again every 50 ms) until the whole body has arrived in a file.
   boto3: ``download_file`` with our part size and concurrency, and with
   its defaults. The text under the table also gives the time a client
   polling as ``kraken.origin.client`` does (1 s, then 1.3x longer each
   time) would have taken, and when the origin's backend download ended.

moto keeps every object in memory here (``MOTO_S3_DEFAULT_KEY_BUFFER_SIZE``);
with ``--moto-spool`` it keeps its default and writes every object above
5 MiB to a temporary file, which puts moto's disk writes and the origin's
SQLite commits (each one an fsync) on the same disk and makes the figures
much noisier. Dirty pages are flushed (``os.sync``) before every
measurement, after the untimed setup (writing the data, pushing it to the
origin).

Both sides sign requests with SigV4; "same settings" for boto3 also means
no payload signing and no checksums (ours sends ``UNSIGNED-PAYLOAD`` and no
checksum), while its defaults sign the payload of every request over plain
HTTP (a SHA-256 of every byte) and add CRC checksums. Every object's size
is checked with a HEAD after each measurement and the fetched blob is checked against
its SHA-256. CPU seconds are those of the origin, of this process (boto3)
and of moto during the timed interval; peak RSS is the origin's VmHWM.
Prints a Markdown block; ``--out FILE`` appends it to FILE.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import http.client
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _daemons import TWISTD, cpu_seconds, emit, free_port  # noqa: E402

from kraken.config import parse_size  # noqa: E402

NAMESPACE = "bench/writeback"
BUCKET = "kraken-bench"
MOTO = os.path.join(os.path.dirname(sys.executable), "moto_server")
READY_TIMEOUT = 60.0
TRANSFER_TIMEOUT = 1800.0
POLL = 0.05  # how often the benchmark asks an origin answering 202
CHUNK = 1 << 20
MOTO_SPOOL = False  # --moto-spool

# Ours: kraken.backends.s3 defaults (S3Config) and the origin's writeback.concurrency.
PART = 64 << 20
PART_CONCURRENCY = 10
WRITEBACK_CONCURRENCY = 4

UPLOADED = r"write-back of sha256:[0-9a-f]{64}: uploaded"
FAILED = r"write-back of sha256:[0-9a-f]{64} failed"
DOWNLOADED = r"downloaded docker/registry/v2/blobs/sha256/"  # kraken.backends.s3's debug line
PENDING = r"write-back database .* open, \d+ tasks pending"


def blob_key(digest: str) -> str:
    hex_ = digest.split(":", 1)[1]
    return f"docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data"


# --------------------------------------------------------------------------- child processes


class Proc:
    """A child process whose output is copied line by line to ``log`` by a
    thread that also counts lines matching the patterns given to ``watch``."""

    live: list[Proc] = []

    def __init__(
        self, name: str, argv: list[str], log: str, watches: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> None:
        """``watches``: patterns watched from the first line on (``hits[pattern]``)."""
        self.name = name
        self.log = log
        self._lock = threading.Condition()
        self._seen: list[tuple[re.Pattern[str], list[tuple[float, str]]]] = []
        self._ended = False
        self.hits = {pattern: self.watch(pattern) for pattern in watches}
        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        Proc.live.append(self)
        self._reader = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._reader.start()

    def watch(self, pattern: str | re.Pattern[str]) -> list[tuple[float, str]]:
        """Matches of ``pattern`` from now on: (monotonic time read, line), appended as they come."""
        hits: list[tuple[float, str]] = []
        with self._lock:
            self._seen.append((re.compile(pattern), hits))
        return hits

    def wait_for(self, hits: list[tuple[float, str]], count: int, timeout: float) -> float:
        """The time the ``count``-th match was read; raises if the process ends or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(hits) < count:
                if self._ended:
                    raise RuntimeError(f"{self.name} exited (rc={self.proc.poll()}); see {self.log}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(
                        f"{self.name}: {len(hits)} of {count} lines after {timeout:.0f}s; see {self.log}"
                    )
                self._lock.wait(left)
            return hits[count - 1][0]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log, "wb") as out:
            for raw in self.proc.stdout:
                now = time.monotonic()
                out.write(raw)
                out.flush()
                line = raw.decode("utf-8", "replace")
                with self._lock:
                    for pattern, hits in self._seen:
                        if pattern.search(line):
                            hits.append((now, line))
                            self._lock.notify_all()
        with self._lock:
            self._ended = True
            self._lock.notify_all()

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def peak_rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        if self in Proc.live:
            Proc.live.remove(self)


@contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop()


def start_moto(work: str) -> tuple[Proc, str]:
    port = free_port()
    argv = [MOTO, "-H", "127.0.0.1", "-p", str(port)]
    # moto keeps an object in memory up to this size and spools larger ones to a temporary file (its default is
    # just under 5 MiB); --moto-spool keeps that default.
    env = {} if MOTO_SPOOL else {"MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(8 << 30)}
    proc = Proc("moto", argv, os.path.join(work, f"moto-{port}.log"), ("Running on",), env)
    try:
        proc.wait_for(proc.hits["Running on"], 1, READY_TIMEOUT)
    except BaseException:
        proc.stop()
        raise
    # Ready lines can be printed before the socket accepts; wait until it does.
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.stop()
                raise RuntimeError(f"moto not accepting on {port}") from None
            time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    s3(url, Config()).create_bucket(Bucket=BUCKET)
    return proc, url


def start_origin(
    work: str, name: str, endpoint: str, store: str, ready: str, watches: tuple[str, ...] = ()
) -> tuple[Proc, int, float]:
    """An origin storing in ``store`` with one S3 backend at ``endpoint``; returns once ``ready`` is logged, with
    the time that line was read. ``watches``: more patterns to watch from the start (``proc.hits``)."""
    http_port, p2p_port = free_port(), free_port()
    config = os.path.join(work, f"{name}.yaml")
    with open(config, "w") as f:
        f.write(
            f"listen_http: 'tcp:{http_port}:interface=127.0.0.1'\n"
            f"p2p: {{listen: 'tcp:{p2p_port}:interface=127.0.0.1', advertise: '127.0.0.1:{p2p_port}'}}\n"
            f"store: {{root: {store}}}\n"
            "cleanup: {enabled: false}\n"
            "backends:\n"
            "  - namespace: '.*'\n"
            f"    s3: {{bucket: {BUCKET}, endpoint: '{endpoint}', access_key: bench, secret_key: bench,"
            " name_path: sharded_docker_blob}\n"
        )
    argv = [TWISTD, "-n", "--pidfile=", "kraken-origin", "--config", config]
    proc = Proc(name, argv, os.path.join(work, f"{name}.log"), (ready, *watches))
    try:
        at = proc.wait_for(proc.hits[ready], 1, READY_TIMEOUT)
    except BaseException:
        proc.stop()
        raise
    return proc, http_port, at


# --------------------------------------------------------------------------- data and HTTP


def write_blob(path: str, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(16 << 20, left))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return f"sha256:{digest.hexdigest()}"


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _request(port: int, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request(method, path, **kwargs)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def push_to_origin(port: int, path: str, digest: str) -> None:
    """The origin's upload API: start, one PATCH of the whole file, commit (201)."""
    base = f"/namespace/{NAMESPACE}/blobs/{digest}/uploads"
    status, headers, body = _request(port, "POST", base)
    if status != 200:
        raise RuntimeError(f"POST {base}: {status} {body[:200]!r}")
    uid = headers["location"]
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        status, _, body = _request(
            port, "PATCH", f"{base}/{uid}", body=f, headers={"Content-Range": f"0-{size}", "Content-Length": str(size)}
        )
    if status != 204:
        raise RuntimeError(f"PATCH {base}/{uid}: {status} {body[:200]!r}")
    status, _, body = _request(port, "PUT", f"{base}/{uid}")
    if status != 201:
        raise RuntimeError(f"PUT {base}/{uid}: {status} {body[:200]!r}")


def s3(url: str, config: Config) -> Any:
    return boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench",
        config=config,
    )  # fmt: skip


def check_bucket(url: str, blobs: list[tuple[str, str, int]]) -> None:
    client = s3(url, Config())
    for _, digest, size in blobs:
        got = client.head_object(Bucket=BUCKET, Key=blob_key(digest))["ContentLength"]
        if got != size:
            raise RuntimeError(f"{blob_key(digest)}: {got} bytes in the bucket, expected {size}")


# Same settings as ours: no payload signing, no checksums, path-style URLs.
SAME = Config(
    s3={"payload_signing_enabled": False, "addressing_style": "path"},
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
    max_pool_connections=PART_CONCURRENCY,
)
DEFAULT = Config()


# --------------------------------------------------------------------------- one measurement


class Sample(dict[str, float]):
    """seconds, plus cpu_origin / cpu_boto3 / cpu_moto / rss_origin and anything else measured."""


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def origin_writeback(work: str, tag: str, blobs: list[tuple[str, str, int]]) -> Sample:
    """Push ``blobs`` to an origin whose backend is down, then time a fresh start against moto."""
    store = os.path.join(work, f"store-{tag}")
    dead = f"http://127.0.0.1:{free_port()}"  # nobody listens: the write-back tasks wait
    origin, port, _ = start_origin(work, f"origin-{tag}-push", dead, store, PENDING)
    with running(origin):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda b: push_to_origin(port, b[0], b[1]), blobs))
    os.sync()  # the pushed blobs' dirty pages are not the write-back's to flush
    moto, url = start_moto(work)
    with running(moto):
        moto_before = moto.cpu()
        # Every pending task is due at start: the clock runs from the line saying how many there are.
        origin, _, start = start_origin(work, f"origin-{tag}", url, store, PENDING, (UPLOADED, FAILED))
        with running(origin):
            cpu_before = origin.cpu()
            end = origin.wait_for(origin.hits[UPLOADED], len(blobs), TRANSFER_TIMEOUT)
            failed = origin.hits[FAILED]
            sample = Sample(
                seconds=end - start,
                cpu_origin=origin.cpu() - cpu_before,
                cpu_moto=moto.cpu() - moto_before,
                rss_origin=origin.peak_rss(),
                failures=len(failed),
            )
        check_bucket(url, blobs)
    shutil.rmtree(store, ignore_errors=True)
    return sample


def boto3_upload(work: str, blobs: list[tuple[str, str, int]], same: bool) -> Sample:
    os.sync()
    moto, url = start_moto(work)
    with running(moto):
        moto_before, cpu_before = moto.cpu(), self_cpu()
        start = time.monotonic()
        if same:
            client = s3(url, SAME)
            if len(blobs) == 1:
                path, digest, _ = blobs[0]
                config = TransferConfig(
                    multipart_threshold=PART + 1, multipart_chunksize=PART, max_concurrency=PART_CONCURRENCY
                )
                client.upload_file(path, BUCKET, blob_key(digest), Config=config)
            else:
                config = TransferConfig(multipart_threshold=PART + 1, use_threads=False)
                with concurrent.futures.ThreadPoolExecutor(WRITEBACK_CONCURRENCY) as pool:
                    futures = [
                        pool.submit(client.upload_file, p, BUCKET, blob_key(d), Config=config) for p, d, _ in blobs
                    ]
                    for future in futures:
                        future.result()
        else:
            client = s3(url, DEFAULT)
            with create_transfer_manager(client, TransferConfig()) as manager:
                futures = [manager.upload(p, BUCKET, blob_key(d)) for p, d, _ in blobs]
                for future in futures:
                    future.result()
        seconds = time.monotonic() - start
        sample = Sample(seconds=seconds, cpu_boto3=self_cpu() - cpu_before, cpu_moto=moto.cpu() - moto_before)
        check_bucket(url, blobs)
    return sample


def kraken_client_wait(ready: float) -> float:
    """When ``kraken.origin.client`` would ask again and find the blob, for a blob ready after ``ready`` s."""
    at, delay = 0.0, 1.0
    while at < ready:
        at += delay
        delay = min(5.0, delay * 1.3)
    return at


def origin_fetch(work: str, url: str, moto: Proc, blob: tuple[str, str, int]) -> Sample:
    _, digest, size = blob
    store = os.path.join(work, "store-fetch")
    target = os.path.join(work, "fetched")
    os.sync()
    origin, port, _ = start_origin(work, "origin-fetch", url, store, PENDING, (DOWNLOADED,))
    with running(origin):
        moto_before, cpu_before = moto.cpu(), origin.cpu()
        path = f"/namespace/{NAMESPACE}/blobs/{digest}"
        start = time.monotonic()
        polls = 0
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            while True:
                conn.request("GET", path)
                response = conn.getresponse()
                if response.status != 202:
                    break
                response.read()
                polls += 1
                time.sleep(POLL)
            ready = time.monotonic() - start
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status} {response.read()[:200]!r}")
            with open(target, "wb") as f:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
        finally:
            conn.close()
        end = time.monotonic()
        downloaded = origin.wait_for(origin.hits[DOWNLOADED], 1, 5) - start
        sample = Sample(
            seconds=end - start,
            ready=ready,
            downloaded=downloaded,
            kraken_client=kraken_client_wait(ready) + (end - start - ready),
            cpu_origin=origin.cpu() - cpu_before,
            cpu_moto=moto.cpu() - moto_before,
            rss_origin=origin.peak_rss(),
            polls=polls,
        )
    if os.path.getsize(target) != size or sha256_file(target) != digest:
        raise RuntimeError(f"the blob fetched through the origin is not {digest}")
    os.unlink(target)
    shutil.rmtree(store, ignore_errors=True)
    return sample


def boto3_download(work: str, url: str, moto: Proc, blob: tuple[str, str, int], same: bool) -> Sample:
    _, digest, size = blob
    target = os.path.join(work, "downloaded")
    os.sync()
    moto_before, cpu_before = moto.cpu(), self_cpu()
    start = time.monotonic()
    if same:
        config = TransferConfig(
            multipart_threshold=PART + 1, multipart_chunksize=PART, max_concurrency=PART_CONCURRENCY
        )
        s3(url, SAME).download_file(BUCKET, blob_key(digest), target, Config=config)
    else:
        s3(url, DEFAULT).download_file(BUCKET, blob_key(digest), target)
    seconds = time.monotonic() - start
    sample = Sample(seconds=seconds, cpu_boto3=self_cpu() - cpu_before, cpu_moto=moto.cpu() - moto_before)
    if os.path.getsize(target) != size:
        raise RuntimeError(f"boto3 downloaded {os.path.getsize(target)} bytes, expected {size}")
    os.unlink(target)
    return sample


# --------------------------------------------------------------------------- the runs


def one_run(work: str, small: list[tuple[str, str, int]], large: tuple[str, str, int], run: int) -> dict[str, Sample]:
    """Every measurement once; the three sides of a transfer run back to back, in the opposite order on even runs
    (the machine's load drifts)."""
    results: dict[str, Sample] = {"load": Sample(seconds=os.getloadavg()[0])}

    def note(name: str, measure: Callable[[], Sample]) -> None:
        sample = results[name] = measure()
        extra = ", ".join(f"{k} {v:.2f}" for k, v in sample.items() if k not in ("seconds", "rss_origin"))
        print(f"  run {run} {name}: {sample['seconds']:.2f} s ({extra})", flush=True)

    def in_turn(sides: list[tuple[str, Callable[[], Sample]]]) -> None:
        for name, measure in sides if run % 2 else reversed(sides):
            note(name, measure)

    in_turn(
        [
            ("small/ours", lambda: origin_writeback(work, f"small{run}", small)),
            ("small/boto3", lambda: boto3_upload(work, small, same=True)),
            ("small/boto3-default", lambda: boto3_upload(work, small, same=False)),
        ]
    )
    in_turn(
        [
            ("large/ours", lambda: origin_writeback(work, f"large{run}", [large])),
            ("large/boto3", lambda: boto3_upload(work, [large], same=True)),
            ("large/boto3-default", lambda: boto3_upload(work, [large], same=False)),
        ]
    )
    moto, url = start_moto(work)
    with running(moto):
        s3(url, SAME).upload_file(large[0], BUCKET, blob_key(large[1]))
        in_turn(
            [
                ("fetch/ours", lambda: origin_fetch(work, url, moto, large)),
                ("fetch/boto3", lambda: boto3_download(work, url, moto, large, same=True)),
                ("fetch/boto3-default", lambda: boto3_download(work, url, moto, large, same=False)),
            ]
        )
    results["load"]["end"] = os.getloadavg()[0]
    return results


def median(runs: list[dict[str, Sample]], name: str, field: str = "seconds") -> float:
    return statistics.median(r[name][field] for r in runs)


def report(args: argparse.Namespace, runs: list[dict[str, Sample]], count: int, small: int, large: int) -> list[str]:
    mib = 1 << 20
    parts = f"{PART // mib} MiB parts, {PART_CONCURRENCY} at once"
    rows = [
        ("small", f"write-back, {count} x {small // mib} MiB", count * small, f"{WRITEBACK_CONCURRENCY} at once"),
        ("large", f"write-back, 1 x {large // mib} MiB", large, f"multipart, {parts}"),
        ("fetch", f"fetch on miss, {large // mib} MiB", large, f"ranged GETs, {parts}"),
    ]
    spool = " --moto-spool" if args.moto_spool else ""
    lines = [
        f"Write-back: `python bench/writeback.py --count {count} --small {args.small} --large {args.large}"
        f" --runs {args.runs}{spool}`, on {platform.node()} ({os.cpu_count()} CPUs), {time.strftime('%Y-%m-%d')},"
        " Python"
        f" {platform.python_version()}, boto3 {boto3.__version__}, moto {moto_version()}. Medians of {len(runs)} runs"
        " (every run's ours / boto3 ratio in brackets).",
        "",
        "| transfer | ours | boto3, same settings | ours / boto3 | boto3 defaults | CPU ours / boto3 (same)"
        " | moto CPU ours / boto3 (same) | origin peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, what, total, settings in rows:
        ours, same, default = (median(runs, f"{key}/{side}") for side in ("ours", "boto3", "boto3-default"))
        ratios = ", ".join(f"{r[f'{key}/ours']['seconds'] / r[f'{key}/boto3']['seconds']:.2f}" for r in runs)
        lines.append(
            f"| {what} ({settings}) | {ours:.2f} s ({total / ours / 1e6:.0f} MB/s) "
            f"| {same:.2f} s ({total / same / 1e6:.0f} MB/s) | **{ours / same:.2f}x** ({ratios}) "
            f"| {default:.2f} s ({total / default / 1e6:.0f} MB/s) "
            f"| {median(runs, f'{key}/ours', 'cpu_origin'):.1f} s / {median(runs, f'{key}/boto3', 'cpu_boto3'):.1f} s "
            f"| {median(runs, f'{key}/ours', 'cpu_moto'):.1f} s / {median(runs, f'{key}/boto3', 'cpu_moto'):.1f} s "
            f"| {median(runs, f'{key}/ours', 'rss_origin') / (1 << 20):.0f} MiB |"
        )
    ready, client = median(runs, "fetch/ours", "ready"), median(runs, "fetch/ours", "kraken_client")
    downloaded = median(runs, "fetch/ours", "downloaded")
    loads = ", ".join(f"{r['load']['seconds']:.1f}-{r['load']['end']:.1f}" for r in runs)
    lines += [
        "",
        f"Fetch on miss, ours: the backend download was done after {downloaded:.2f} s, the origin answered 200"
        f" after {ready:.2f} s (verifying and committing the blob took the difference) and the body was received"
        f" after {median(runs, 'fetch/ours'):.2f} s (medians; the benchmark asks every {POLL * 1000:.0f} ms). A"
        " client polling as `kraken.origin.client` does (after 1 s, then 1.3x longer each time) would have had the"
        f" whole blob after {client:.2f} s ({client / median(runs, 'fetch/boto3'):.2f}x boto3). Load average (1 min)"
        f" at the start and end of each run: {loads}.",
    ]
    return lines


def moto_version() -> str:
    from importlib.metadata import version

    return version("moto")


def make_data(work: str, count: int, small: int, large: int) -> tuple[list[tuple[str, str, int]], tuple[str, str, int]]:
    data = os.path.join(work, "data")
    os.makedirs(data, exist_ok=True)
    blobs = []
    for i in range(count):
        path = os.path.join(data, f"small-{i}")
        blobs.append((path, write_blob(path, small), small))
    path = os.path.join(data, "large")
    return blobs, (path, write_blob(path, large), large)


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="how many small blobs")
    parser.add_argument("--small", default="16MiB", help="size of each small blob")
    parser.add_argument("--large", default="1GiB", help="size of the large blob (multipart write-back, fetch)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--moto-spool",
        action="store_true",
        help="let moto spool objects above 5 MiB to temporary files (its default; by default they stay in memory)",
    )
    parser.add_argument("--work", default=None, help="scratch directory (default: a new temporary one, removed)")
    parser.add_argument("--out", default=None, help="also append the Markdown block to this file")
    args = parser.parse_args()
    if not os.access(MOTO, os.X_OK):
        parser.error(f"{MOTO} is missing: install moto[server] into this virtualenv")
    small, large = parse_size(args.small), parse_size(args.large)
    global MOTO_SPOOL
    MOTO_SPOOL = args.moto_spool
    signal.signal(signal.SIGTERM, _terminated)
    work = args.work or tempfile.mkdtemp(prefix="kraken-writeback-")
    os.makedirs(work, exist_ok=True)
    try:
        print(f"writing {args.count} x {args.small} and 1 x {args.large} of random bytes to {work}", flush=True)
        blobs, big = make_data(work, args.count, small, large)
        os.sync()
        runs = [one_run(work, blobs, big, run) for run in range(1, args.runs + 1)]
    finally:
        for proc in list(Proc.live):
            proc.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(report(args, runs, args.count, small, large)) + "\n"
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
