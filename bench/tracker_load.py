"""Tracker load: announces per second on one core, from a load generator in a second process.

    python bench/tracker_load.py [--peers 10000] [--blobs 100] [--connections 10,100] [--duration 20] [--runs 3]
                                 [--generator wrk|python] [--profile SECONDS] [--tracker-twistd PATH]
                                 [--tls off|on|both] [--work DIR] [--out FILE]

A real kraken-origin holds ``--blobs`` small blobs (64 KiB of random bytes each, uploaded over its HTTP API),
so the tracker's announce path is the real one: it asks the origin which origins seed each blob (cached for
``origin_peers_cache_ttl``, 10 s) and hands them out with the agents. The tracker (``twistd kraken-tracker``,
its default config apart from ports) is pinned to core 0 with ``taskset``; the generator and the origin to
core 1 (the origin answers about ``blobs / 10`` lookups a second).

``--peers`` simulated agents, peer k announcing blob ``k % blobs`` (so each blob has ``peers / blobs``
peers), every announce from an agent still downloading (``complete: false``): the costliest kind, answered
with up to 50 peers (about 5 KB of JSON). Each peer announces once before the measurement, so the store
holds them all; then the generator keeps ``--connections`` keep-alive connections busy for ``--duration``
seconds (a closed loop: a connection sends its next announce when the answer to the last has arrived),
cycling through the peers. Reported per run: announces per second, latency percentiles, non-200 answers,
and the CPU of tracker, generator and origin over the run (from /proc), so a reader can tell which one
was saturated. The table gives the median over ``--runs`` runs.

Generators: ``wrk`` (Debian's wrk 4.1 with a Lua script writing each announce; C, so it needs a small
part of its core), or ``python`` (asyncio, this file run with ``--generate``); the default is wrk when it
is on PATH. ``--profile SECONDS`` runs py-spy on the tracker during one more run of the generator and prints
where its time goes (own time by package, and the time of some functions with their callees).
``--tracker-twistd PATH`` runs the tracker with another twistd executable, e.g. a wrapper that patches a
change in, to measure it against the committed tracker.

``--tls on``: the tracker and the origin with mutual TLS (kraken/cli/certs.py's development CA: each presents
its certificate and requires one), the tracker reaching the origin over https, and the generator presenting a
client certificate. wrk cannot present one, so ``--tls`` takes the Python generator, for the plain runs too
(``--tls both``: a plain bench, then a TLS one, the same runs on each, and their ratio), so the comparison is
fair; each connection does one TLS handshake, then keeps it alive.

Prints Markdown; ``--out FILE`` also appends it to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import http.client
import json
import os
import platform
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import BinaryIO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _daemons import BenchTLS, Daemon, cpu_seconds, emit, free_port, twistd, write_blob, write_config  # noqa: E402

from kraken.core import MetaInfo  # noqa: E402

NAMESPACE = "bench/tracker"
BLOB_SIZE = 64 << 10
TRACKER_CORE = "0"
GENERATOR_CORE = "1"
PEER_PORT = 16001


def request(
    port: int,
    method: str,
    path: str,
    body: BinaryIO | bytes | None = None,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> bytes:
    """One HTTP request to 127.0.0.1:``port`` (HTTPS with ``context``): the body (for a POST, its Location
    header); raises unless 2xx."""
    conn = (
        http.client.HTTPSConnection("127.0.0.1", port, timeout=3600, context=context)
        if context
        else http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        if not 200 <= response.status < 300:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
        location = response.getheader("Location")
        return location.encode() if method == "POST" and location else data
    finally:
        conn.close()


def upload(origin_port: int, namespace: str, path: str, digest: str, context: ssl.SSLContext | None = None) -> None:
    """Start, PATCH the whole file, commit: the origin's upload protocol (kraken/origin/http.py)."""
    base = f"/namespace/{namespace}/blobs/{digest}/uploads"
    uid = request(origin_port, "POST", base, context=context).decode()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        headers = {"Content-Range": f"0-{size}", "Content-Length": str(size)}
        request(origin_port, "PATCH", f"{base}/{uid}", body=f, headers=headers, context=context)
    request(origin_port, "PUT", f"{base}/{uid}", context=context)


def percentile(sorted_values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of an ascending list; 0 for an empty one."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil(n * p / 100), at least 1
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


@dataclass
class Result:
    """One generator run. Latencies in seconds; ``cpu``: CPU seconds of each process during the run."""

    requests: int
    seconds: float
    non_200: int
    socket_errors: int
    p50: float
    p90: float
    p99: float
    max: float
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def peer_ip(k: int) -> str:
    return f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"


def announce_body(k: int, blob: tuple[str, str]) -> bytes:
    """Peer k's announce of ``blob`` (digest, info hash), exactly as ``TrackerClient.announce`` writes it."""
    digest, info_hash = blob
    doc = {
        "peer_id": f"{k:040x}", "ip": peer_ip(k), "port": PEER_PORT, "namespace": NAMESPACE,
        "digest": digest, "info_hash": info_hash, "complete": False,
    }  # fmt: skip
    return json.dumps(doc, separators=(",", ":")).encode()


def announce_bodies(blobs: list[tuple[str, str]], peers: int) -> list[bytes]:
    """Every peer's announce: peer k announces blob ``k % len(blobs)``, as the wrk script's peers do."""
    return [announce_body(k, blobs[k % len(blobs)]) for k in range(peers)]


def announce_request(port: int, body: bytes) -> bytes:
    head = (
        f"POST /announce HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# -- the Python generator (a second process: this file with --generate SPEC) --


class ResponseParser:
    """Splits a stream of HTTP/1.1 responses (Content-Length or chunked bodies); yields each status."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[int]:
        self._buf += data
        done: list[int] = []
        while True:
            status = self._one()
            if status is None:
                return done
            done.append(status)

    def _one(self) -> int | None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = bytes(buf[:end]).split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            pos = start
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
                pos = eol + 2 + size + 2
                if len(buf) < pos:
                    return None
                if size == 0:
                    break
        else:
            pos = start + int(headers.get(b"content-length", b"0"))
            if len(buf) < pos:
                return None
        del buf[:pos]
        return status


class _Connection(asyncio.Protocol):
    """One keep-alive connection in a closed loop: the next request goes when the last answer is in."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.parser = ResponseParser()
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        payload = self.load.next_request()
        if payload is None:
            self.transport.close()
            return
        self.sent = time.perf_counter()
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        for status in self.parser.feed(data):
            self.load.record(status, time.perf_counter() - self.sent)
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.closed(exc)


class Load:
    """Hands out requests (each once, or round and round until the deadline) and collects the answers."""

    def __init__(self, requests: list[bytes], *, once: bool, deadline: float) -> None:
        self._requests = requests
        self._once = once
        self._deadline = deadline
        self._next = 0
        self.latencies: list[float] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        self.errors = 0
        self.open = 0
        self.all_closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def next_request(self) -> bytes | None:
        if self._once and self._next >= len(self._requests):
            return None
        if not self._once and time.perf_counter() >= self._deadline:
            return None
        payload = self._requests[self._next % len(self._requests)]
        self._next += 1
        return payload

    def record(self, status: int, seconds: float) -> None:
        self.statuses[status] += 1
        self.latencies.append(seconds)

    def closed(self, exc: Exception | None) -> None:
        if exc is not None:
            self.errors += 1
        self.open -= 1
        if self.open == 0 and not self.all_closed.done():
            self.all_closed.set_result(None)


async def generate(port: int, requests: list[bytes], *, connections: int, duration: float, once: bool,
                   context: ssl.SSLContext | None = None) -> Result:  # fmt: skip
    """The closed loop over ``connections`` keep-alive connections (TLS with ``context``, each presenting its
    certificate once, in its handshake)."""
    start = time.perf_counter()
    load = Load(requests, once=once, deadline=start + duration)
    loop = asyncio.get_running_loop()
    load.open = connections
    tls = {"ssl": context, "server_hostname": "127.0.0.1"} if context else {}
    for _ in range(connections):
        await loop.create_connection(lambda: _Connection(load), "127.0.0.1", port, **tls)  # type: ignore[arg-type]
    await load.all_closed
    took = time.perf_counter() - start
    lat = sorted(load.latencies)
    ok = load.statuses.get(200, 0)
    return Result(
        requests=len(lat), seconds=took, non_200=len(lat) - ok, socket_errors=load.errors, p50=percentile(lat, 50),
        p90=percentile(lat, 90), p99=percentile(lat, 99), max=lat[-1] if lat else 0.0,
    )  # fmt: skip


def generate_main(spec_path: str) -> None:
    """The Python generator's process: the spec from the benchmark in, its Result as JSON out."""
    with open(spec_path) as f:
        spec = json.load(f)
    with open(spec["bodies"], "rb") as f:
        requests = [announce_request(spec["port"], line.rstrip(b"\n")) for line in f]
    tls = spec.get("tls")
    context = BenchTLS(**{**tls, "credentials": tuple(tls["credentials"])}).context() if tls else None
    result = asyncio.run(
        generate(spec["port"], requests, connections=spec["connections"], duration=spec["duration"], once=spec["once"],
                 context=context)
    )  # fmt: skip
    print(json.dumps(asdict(result)))


# -- the wrk generator --

WRK_SCRIPT = """\
-- Written by bench/tracker_load.py: peer k announces blob k %% nblobs, as TrackerClient.announce does.
local blobs = {%(blobs)s}
local nblobs, npeers = %(nblobs)d, %(npeers)d
local headers = {["Content-Type"] = "application/json"}
local k = 0
request = function()
  local b = blobs[(k %% nblobs) + 1]
  local ip = string.format("10.%%d.%%d.%%d", math.floor(k / 65536) %% 256, math.floor(k / 256) %% 256, k %% 256)
  local body = string.format(
    '{"peer_id":"%%040x","ip":"%%s","port":%(port)d,"namespace":"%(namespace)s","digest":"%%s","info_hash":"%%s","complete":false}',
    k, ip, b[1], b[2])
  k = (k + 1) %% npeers
  return wrk.format("POST", "/announce", headers, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nRESULT {"requests":%%d,"seconds":%%f,"non_200":%%d,"socket_errors":%%d,'
      .. '"p50":%%f,"p90":%%f,"p99":%%f,"max":%%f}\\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1e6, latency:percentile(90) / 1e6, latency:percentile(99) / 1e6, latency.max / 1e6))
end
"""


def wrk_script(blobs: list[tuple[str, str]], peers: int) -> str:
    table = ", ".join(f'{{"{d}", "{h}"}}' for d, h in blobs)
    return WRK_SCRIPT % {"blobs": table, "nblobs": len(blobs), "npeers": peers, "port": PEER_PORT,
                         "namespace": NAMESPACE}  # fmt: skip


def parse_wrk(output: str) -> Result:
    """The RESULT line the script's ``done`` writes."""
    for line in output.splitlines():
        if line.startswith("RESULT "):
            return Result(**json.loads(line[len("RESULT ") :]))
    raise RuntimeError(f"no RESULT line in wrk's output:\n{output}")


# -- the benchmark --


def bench_configs(work: str, origin_http: int, origin_p2p: int, tracker_port: int, tls: BenchTLS | None
                  ) -> tuple[str, str]:  # fmt: skip
    """The origin's and the tracker's config files (with ``tls``: mutual TLS on both, the tracker reaching the
    origin over https); their paths."""
    secure = f"tls: {tls.block()}\n" if tls else ""
    origin = write_config(
        work,
        "origin",
        f"listen_http: 'tcp:{origin_http}:interface=127.0.0.1'\n"
        f"store: {{root: {work}/origin}}\n"
        f"p2p: {{listen: 'tcp:{origin_p2p}:interface=127.0.0.1', advertise: '127.0.0.1:{origin_p2p}'}}\n" + secure,
    )
    scheme = "https" if tls else "http"
    tracker = write_config(
        work,
        "tracker",
        f"listen_http: 'tcp:{tracker_port}:interface=127.0.0.1'\norigin: '{scheme}://127.0.0.1:{origin_http}'\n"
        + secure,
    )
    return origin, tracker


class Bench:
    """An origin holding the blobs and a tracker pinned to one core; ``tls``: both with mutual TLS."""

    def __init__(
        self, work: str, blobs: int, peers: int, tracker_twistd: str | None = None, *, tls: bool = False
    ) -> None:
        self.work = work
        os.makedirs(work, exist_ok=True)
        self.peers = peers
        self.tls = BenchTLS.make(work) if tls else None
        self.context = self.tls.context() if self.tls else None
        origin_http, origin_p2p, self.tracker_port = free_port(), free_port(), free_port()
        origin, tracker = bench_configs(work, origin_http, origin_p2p, self.tracker_port, self.tls)
        pin = ["taskset", "-c", GENERATOR_CORE]
        argv = pin + twistd("kraken-origin", origin)
        self.origin = Daemon("origin", argv, f"{work}/origin.log", "origin P2P listening")
        self.tracker: Daemon | None = None
        try:
            self.blobs = [self._blob(origin_http, i) for i in range(blobs)]
            argv = twistd("kraken-tracker", tracker)
            if tracker_twistd:
                argv[0] = tracker_twistd
            argv = ["taskset", "-c", TRACKER_CORE, *argv]
            self.tracker = Daemon("tracker", argv, f"{work}/tracker.log", "tracker listening")
        except BaseException:
            self.stop()
            raise
        self.bodies = os.path.join(work, "announces.jsonl")
        with open(self.bodies, "wb") as f:
            f.writelines(body + b"\n" for body in announce_bodies(self.blobs, peers))

    def _blob(self, origin_http: int, i: int) -> tuple[str, str]:
        """A fresh blob on the origin: (digest, info hash of its metainfo, as the origin made it)."""
        path = os.path.join(self.work, f"blob-{i}")
        digest = write_blob(path, BLOB_SIZE)
        upload(origin_http, NAMESPACE, path, digest, self.context)
        os.unlink(path)
        metainfo = request(origin_http, "GET", f"/namespace/{NAMESPACE}/blobs/{digest}/metainfo", context=self.context)
        info = MetaInfo.from_json(metainfo)
        return digest, info.info_hash

    def generator(self, kind: str, connections: int, duration: float, *, once: bool = False) -> subprocess.Popen[str]:
        pin = ["taskset", "-c", GENERATOR_CORE]
        if kind == "wrk":
            script = os.path.join(self.work, "announce.lua")
            with open(script, "w") as f:
                f.write(wrk_script(self.blobs, self.peers))
            argv = [*pin, "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s", "-s", script,
                    f"http://127.0.0.1:{self.tracker_port}"]  # fmt: skip
        else:
            spec = os.path.join(self.work, "generate.json")
            with open(spec, "w") as f:
                json.dump({"port": self.tracker_port, "bodies": self.bodies, "connections": connections,
                           "duration": duration, "once": once, "tls": asdict(self.tls) if self.tls else None},
                          f)  # fmt: skip
            argv = [*pin, sys.executable, os.path.abspath(__file__), "--generate", spec]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, kind: str, connections: int, duration: float, *, once: bool = False) -> Result:
        """One generator run; its result with the CPU seconds each process used meanwhile."""
        assert self.tracker is not None
        pids = {"tracker": self.tracker.proc.pid, "origin": self.origin.proc.pid}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        gen = self.generator(kind, connections, duration, once=once)
        # The generator's CPU is read from its rusage once it has exited: wait4 gives it.
        _, status, usage = os.wait4(gen.pid, 0)
        gen.returncode = os.waitstatus_to_exitcode(status)
        assert gen.stdout is not None and gen.stderr is not None
        out, err = gen.stdout.read(), gen.stderr.read()
        if gen.returncode != 0:
            raise RuntimeError(f"generator failed ({gen.returncode}): {err.strip()[-2000:]}")
        result = parse_wrk(out) if kind == "wrk" else Result(**json.loads(out))
        result.cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        result.cpu["generator"] = usage.ru_utime + usage.ru_stime
        return result

    def stop(self) -> None:
        for daemon in (self.tracker, self.origin):
            if daemon is not None:
                daemon.stop()


def profile(bench: Bench, kind: str, connections: int, seconds: float) -> list[str]:
    """py-spy on the tracker during one generator run, summarized by ``summarize_profile``."""
    assert bench.tracker is not None
    raw = os.path.join(bench.work, "tracker.pyspy.txt")
    py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    spy = subprocess.Popen(
        ["taskset", "-c", GENERATOR_CORE, py_spy, "record", "--pid", str(bench.tracker.proc.pid), "--duration",
         f"{seconds:g}", "--rate", "200", "--format", "raw", "--output", raw, "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)  # py-spy attaches; the run outlasts its window
    bench.run(kind, connections, seconds + 2)
    _, err = spy.communicate()
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.strip()[-2000:]}")
    return summarize_profile(raw)


#: Functions whose time with callees the profile summary reports: (label, frame name as py-spy writes it).
PROFILE_FUNCTIONS = [
    ("twisted.web request handling, the app's included (`Request.requestReceived`)", "Request.requestReceived"),
    ("Klein routing and rendering, the app's included (`KleinResource.render`)", "KleinResource.render"),
    ("the announce resource, parsing included (`AnnounceResource.render_POST`)", "AnnounceResource.render_POST"),
    ("the lean announce path, the handler included (`LeanChannel._serve`)", "LeanChannel._serve"),
    ("the announce handler through a coroutine (`TrackerHTTP.announce`: the Redis store)", "TrackerHTTP.announce"),
    ("the announce handler without a coroutine (`TrackerHTTP.answer`)", "TrackerHTTP.answer"),
    ("parsing and checking the announce (`parse_announce_and_progress`)", "parse_announce_and_progress"),
    ("peer store lookup (`MemoryPeerStore.live`)", "MemoryPeerStore.live"),
    ("peer store update (`MemoryPeerStore.record`)", "MemoryPeerStore.record"),
    ("handout (`handout`)", "handout"),
    ("answer to JSON (`AnswerEncoder.encode`)", "AnswerEncoder.encode"),
    ("Content-Type parsed with `email` for form bodies (`_parseContentType`)", "_parseContentType"),
    ("access log line (`HTTPFactory.log`)", "HTTPFactory.log"),
    ("every log event, access log and filtered debug events included (`Logger.emit`)", "Logger.emit"),
    ("asking the origin which origins seed a blob (`ClusterClient.peers`)", "ClusterClient.peers"),
    ("reading sockets (`Connection.doRead`), the request handling it calls included", "Connection.doRead"),
    ("writing sockets (`Connection.doWrite`)", "Connection.doWrite"),
]


def summarize_profile(path: str, top: int = 15) -> list[str]:
    """Markdown from py-spy's raw (collapsed) stacks: own time by package, and the time of chosen functions
    with their callees, as shares of all samples of the tracker."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            own[_package(frames[-1])] += n
            for name in {frame.partition(" (")[0] for frame in frames}:
                inclusive[name] += n
    if not total:
        return ["py-spy took no samples of the tracker."]
    rows = [f"py-spy on the tracker, {total} samples. Own time by package (where the samples were):", ""]
    rows += ["| package or module | own time |", "|---|---|"]
    rows += [f"| `{name}` | {100 * n / total:.1f} % |" for name, n in own.most_common(top)]
    rest = total - sum(n for _, n in own.most_common(top))
    if rest:
        rows.append(f"| the rest | {100 * rest / total:.1f} % |")
    rows += ["", "Time of some functions with their callees:", "", "| what | share |", "|---|---|"]
    rows += [f"| {label} | {100 * inclusive[name] / total:.1f} % |" for label, name in PROFILE_FUNCTIONS]
    return rows


def _package(frame: str) -> str:
    """``func (twisted/web/http.py:12)`` -> ``twisted/web``; ``(json/encoder.py:3)`` -> ``json``."""
    where = frame.partition(" (")[2].rstrip(")").rpartition(":")[0]
    parts = where.split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    if parts[0] in ("twisted", "kraken") and len(parts) > 2:
        return "/".join(parts[:2])
    return parts[0] or frame


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--blobs", type=int, default=100)
    parser.add_argument(
        "--connections", default="100", help="keep-alive connections of the generator (comma-separated: a row each)"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--generator", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--profile", type=float, default=0.0, help="also profile the tracker for this many seconds")
    parser.add_argument(
        "--tracker-twistd", default=None, help="run the tracker with this twistd (to measure a patched tracker)"
    )
    parser.add_argument(
        "--tls",
        choices=tuple(TLS_MODES),
        default="off",
        help="mutual TLS (on), or plain and TLS (both); Python generator",
    )
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--generate", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate_main(args.generate)
        return 0
    try:
        counts = [int(c) for c in args.connections.split(",")]
    except ValueError:
        parser.error(f"--connections: not a comma-separated list of numbers: {args.connections!r}")
    if any(c < 1 for c in counts):
        parser.error("--connections must be positive")
    if args.peers < args.blobs or args.blobs < 1:
        parser.error("need at least one blob and at least as many peers as blobs")
    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        parser.error("needs two cores: the tracker on one, the generator on the other")
    if args.tls != "off":
        args.generator = "python"  # wrk cannot present a client certificate: the Python generator for both
    work = args.work or tempfile.mkdtemp(prefix="kraken-tracker-load-")
    results: dict[bool, dict[int, list[Result]]] = {}
    profile_rows: list[str] = []
    try:
        for tls in TLS_MODES[args.tls]:
            results[tls], rows = measure(args, os.path.join(work, "tls" if tls else "plain"), counts, tls)
            profile_rows += rows
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    lines: list[str] = []
    for tls, runs in results.items():
        lines += [*table(args, runs, tls), ""]
    if args.tls == "both":
        lines += [*tls_ratio(results[False], results[True]), ""]
    lines += profile_rows
    emit("\n".join(lines).rstrip("\n") + "\n", args.out)
    return 0


TLS_MODES = {"off": (False,), "on": (True,), "both": (False, True)}


def measure(args: argparse.Namespace, work: str, counts: list[int], tls: bool) -> tuple[dict[int, list[Result]],
                                                                                        list[str]]:  # fmt: skip
    """One bench (plain, or mutual TLS with ``tls``): the prefill, then ``--runs`` runs per connection count;
    the results and the profile's rows."""
    bench = Bench(work, args.blobs, args.peers, args.tracker_twistd, tls=tls)
    runs: dict[int, list[Result]] = {}
    try:
        # Every peer announces once: the store holds them all, the origin lookups are cached.
        fill = bench.run("python", 100, 3600.0, once=True)
        if fill.requests != args.peers or fill.non_200 or fill.socket_errors:
            raise RuntimeError(f"prefill failed: {fill}")
        for count in counts:
            runs[count] = []
            for i in range(args.runs):
                result = bench.run(args.generator, count, args.duration)
                print(f"  {'TLS ' if tls else ''}{count} connections, run {i + 1}: {json.dumps(asdict(result))}",
                      file=sys.stderr, flush=True)  # fmt: skip
                runs[count].append(result)
        profile_rows = profile(bench, args.generator, counts[-1], args.profile) if args.profile else []
    finally:
        bench.stop()
    return runs, profile_rows


def tls_ratio(plain: dict[int, list[Result]], secure: dict[int, list[Result]]) -> list[str]:
    """``--tls both``: announces/s without and with mutual TLS, and the ratio."""
    rows = ["Announces/s without and with mutual TLS (same generator, same runs):", "",
            "| connections | plain | mutual TLS | TLS / plain |", "|---|---|---|---|"]  # fmt: skip
    for count in plain:
        a, b = (statistics.median(r.rate for r in runs[count]) for runs in (plain, secure))
        rows.append(f"| {count} | {a:,.0f} | {b:,.0f} | {b / a:.2f}x |")
    return rows


def table(args: argparse.Namespace, runs: dict[int, list[Result]], tls: bool = False) -> list[str]:
    tls_flag = f" --tls {args.tls}" if args.tls != "off" else ""
    rows = [
        f"Tracker load{' with mutual TLS' if tls else ''}: `python bench/tracker_load.py --peers {args.peers} "
        f"--blobs {args.blobs} --connections {args.connections} "
        f"--duration {args.duration:g} --runs {args.runs} --generator {args.generator}{tls_flag}`, on "
        f"{platform.node()} ({os.cpu_count()} CPUs), Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}. Medians of {args.runs} runs of {args.duration:g} s (each run's rate in "
        f"brackets); tracker on core {TRACKER_CORE}, generator ({args.generator}) and origin on core "
        f"{GENERATOR_CORE}; CPU is each process's share of one core over the run.",
        "",
        "| peers / blobs | connections | announces/s | latency p50 / p90 / p99 / max | errors "
        "| tracker CPU | announces per tracker CPU-second | generator CPU | origin CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for count, results in runs.items():

        def med(key: str, results: list[Result] = results) -> float:
            return 1000 * statistics.median(float(getattr(r, key)) for r in results)

        def cpu(name: str, results: list[Result] = results) -> float:
            return statistics.median(r.cpu[name] / r.seconds for r in results)

        rates = sorted(r.rate for r in results)
        per_cpu = statistics.median(r.requests / r.cpu["tracker"] for r in results)
        errors = sum(r.non_200 + r.socket_errors for r in results)
        rows.append(
            f"| {args.peers:,} / {args.blobs} | {count} | {statistics.median(rates):,.0f} "
            f"({', '.join(f'{r:,.0f}' for r in rates)}) "
            f"| {med('p50'):.1f} / {med('p90'):.1f} / {med('p99'):.1f} / {med('max'):.0f} ms | {errors} "
            f"| {cpu('tracker'):.0%} | {per_cpu:,.0f} | {cpu('generator'):.0%} | {cpu('origin'):.0%} |"
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
