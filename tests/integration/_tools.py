"""Helpers of the integration tests: skopeo runs, a byte-counting TCP relay, digest checks of copied images."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.protocols import portforward

SKOPEO_TIMEOUT = 300.0  # seconds; a backstop


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def skopeo(*args: str, timeout: float = SKOPEO_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """Run skopeo (blocking: the herd is another process) and insist on success."""
    proc = subprocess.run(["skopeo", *args], capture_output=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"skopeo {' '.join(args)} exited {proc.returncode}\n"
        f"stdout: {proc.stdout.decode(errors='replace')[-3000:]}\n"
        f"stderr: {proc.stderr.decode(errors='replace')[-5000:]}"
    )
    return proc


@dataclass(frozen=True)
class Access:
    """How a client reaches one registry: plain HTTP (no ``cert_dir``), or TLS trusting the CA in ``cert_dir`` (a
    directory holding ``ca.crt``, what skopeo's ``--*-cert-dir`` takes), with Basic auth ``creds`` (user:password)
    when given."""

    cert_dir: str | None = None
    creds: str | None = None

    def flags(self, role: str = "") -> list[str]:
        """skopeo's flags for this registry as the ``src`` or ``dest`` of a copy; no role: for inspect, list-tags."""
        prefix = f"--{role}-" if role else "--"
        if self.cert_dir is None:
            return [f"{prefix}tls-verify=false"]
        return [f"{prefix}cert-dir={self.cert_dir}", *([f"{prefix}creds={self.creds}"] if self.creds else [])]


PLAIN = Access()


def skopeo_inspect_raw(ref: str, access: Access = PLAIN) -> bytes:
    return skopeo("inspect", "--raw", *access.flags(), ref).stdout


def skopeo_inspect(ref: str, access: Access = PLAIN) -> dict[str, Any]:
    return json.loads(skopeo("inspect", *access.flags(), ref).stdout)


def get_json(url: str, context: ssl.SSLContext | None = None) -> Any:
    """GET ``url`` (over TLS with ``context``, e.g. one presenting a cluster certificate) and parse its JSON."""
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return json.loads(response.read())


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (bound together, then released)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def check_dir_copy(path: str) -> tuple[bytes, set[str]]:
    """A ``dir:`` copy: every blob file is named by its sha256. Returns the manifest bytes and the blob digests."""
    blobs = set()
    for name in os.listdir(path):
        if re.fullmatch(r"[0-9a-f]{64}", name):
            digest = "sha256:" + name
            assert sha256_file(os.path.join(path, name)) == digest, f"{path}/{name} does not hash to its name"
            blobs.add(digest)
    with open(os.path.join(path, "manifest.json"), "rb") as f:
        manifest = f.read()
    return manifest, blobs


def check_oci_copy(path: str) -> dict[str, bytes]:
    """An ``oci:`` copy: every blob hashes to its name. Returns every blob's bytes-digest map (small ones read)."""
    blobs_dir = os.path.join(path, "blobs", "sha256")
    found = {}
    for name in os.listdir(blobs_dir):
        digest = "sha256:" + name
        assert sha256_file(os.path.join(blobs_dir, name)) == digest, f"{blobs_dir}/{name} does not hash to its name"
        size = os.path.getsize(os.path.join(blobs_dir, name))
        if size < 1 << 20:
            with open(os.path.join(blobs_dir, name), "rb") as f:
                found[digest] = f.read()
        else:
            found[digest] = b""
    return found


def oci_index_entries(path: str) -> list[dict[str, Any]]:
    with open(os.path.join(path, "index.json"), "rb") as f:
        return list(json.load(f)["manifests"])


# ---- processes from reactor tests


class _Collector(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        code = reason.value.exitCode if isinstance(reason.value, (error.ProcessDone, error.ProcessTerminated)) else -1
        self.ended.callback(code if code is not None else -1)


async def run_process(reactor: Any, argv: list[str], timeout: float = SKOPEO_TIMEOUT) -> tuple[int, bytes, bytes]:
    """spawnProcess ``argv``; returns (exit code, stdout, stderr). Killed after ``timeout`` (a backstop)."""
    collector = _Collector()
    transport = reactor.spawnProcess(collector, argv[0], argv, env=dict(os.environ))
    killer = reactor.callLater(timeout, transport.signalProcess, "KILL")
    try:
        code = await collector.ended
    finally:
        if killer.active():
            killer.cancel()
    return code, bytes(collector.out), bytes(collector.err)


# ---- a TCP relay in front of the registry that counts what clients send


def parse_requests(stream: bytes) -> list[tuple[str, str]]:
    """(method, target) of each HTTP/1.1 request in one connection's client-to-server bytes."""
    found = []
    pos = 0
    while pos < len(stream):
        end = stream.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        lines = stream[pos:end].decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        found.append((method, target))
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        pos = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                line_end = stream.find(b"\r\n", pos)
                if line_end < 0:
                    return found
                size = int(stream[pos:line_end].split(b";")[0], 16)
                pos = line_end + 2
                if size == 0:
                    trailer_end = stream.find(b"\r\n", pos)  # no trailers: just the final CRLF
                    pos = (trailer_end if trailer_end >= 0 else len(stream)) + 2
                    break
                pos += size + 2
        else:
            pos += int(headers.get("content-length", "0"))
    return found


@dataclass
class Traffic:
    """What clients sent through the relay: bytes, and each connection's stream (while small)."""

    upstream_bytes: int = 0
    streams: list[bytearray] = field(default_factory=list)
    capture_limit: int = 8 << 20

    def reset(self) -> None:
        self.upstream_bytes = 0
        self.streams = []

    def new_stream(self) -> bytearray:
        stream = bytearray()
        self.streams.append(stream)
        return stream

    def add(self, stream: bytearray, data: bytes) -> None:
        self.upstream_bytes += len(data)
        if self.upstream_bytes <= self.capture_limit:
            stream += data

    def request_lines(self) -> list[tuple[str, str]]:
        """(method, target) of every request the clients sent since the last reset."""
        assert self.upstream_bytes <= self.capture_limit, "too much traffic to list its requests"
        return [request for stream in self.streams for request in parse_requests(bytes(stream))]


class _CountingServer(portforward.ProxyServer):
    noisy = False

    def connectionMade(self) -> None:
        self._stream = self.factory.traffic.new_stream()
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        self.factory.traffic.add(self._stream, data)
        super().dataReceived(data)


class CountingRelayFactory(portforward.ProxyFactory):
    protocol = _CountingServer
    noisy = False

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.traffic = Traffic()


def _bindable(ports: list[int]) -> bool:
    """Whether every one of ``ports`` can be bound on 127.0.0.1 at once (released on return)."""
    socks: list[socket.socket] = []
    try:
        for port in ports:
            socks.append(socket.socket())
            socks[-1].bind(("127.0.0.1", port))
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()
    return True


def free_agent_base(agents: int, avoid: set[int]) -> int:
    """A port p with p+1000k, p+1000k+1 and p+1000k+2 free for every agent k (the herd's layout), none in ``avoid``
    (ports handed out already, free only until their daemon binds them)."""
    for _ in range(200):
        [base] = free_ports(1)
        wanted = [base + 1000 * k + i for k in range(agents) for i in range(3)]
        if wanted[-1] < 65536 and avoid.isdisjoint(wanted) and _bindable(wanted):
            return base
    raise RuntimeError(f"no free block of ports for {agents} agents")


# ---- the herd a test runs against, plain or secure


@dataclass(frozen=True)
class Target:
    """The herd a test runs against, ``plain`` or ``secure``, as clients reach it: ``herd`` has ``registry`` (the
    proxy's host:port), ``origin_url``, ``agent_registry(k)`` and ``agent_api(k)``; ``proxy`` and ``agents`` say
    how skopeo reaches the proxy's and the agents' registries; ``context`` (secure: TLS presenting a certificate of
    the cluster's CA) is how the tests read the internal APIs."""

    name: str
    herd: Any
    proxy: Access = PLAIN
    agents: Access = PLAIN
    context: ssl.SSLContext | None = None

    def ref(self, repo: str, tag_or_digest: str | None = None) -> str:
        """``docker://<proxy>/repo``, with ``:tag`` or ``@digest`` when given."""
        base = f"docker://{self.herd.registry}/{repo}"
        if tag_or_digest is None:
            return base
        sep = "@" if tag_or_digest.startswith("sha256:") else ":"
        return f"{base}{sep}{tag_or_digest}"

    def stats(self, url: str) -> dict[str, Any]:
        """The ``/stats`` counters of the daemon at ``url`` (an origin or an agent API)."""
        found: dict[str, Any] = get_json(f"{url}/stats", self.context)
        return found


def push_new_image(registry: str, path: str, name: str, *, layers: int, layer_size: str) -> tuple[Any, str]:
    """A new image (an OCI layout at ``path``) pushed with skopeo to the plain registry at ``registry`` as
    ``integration/<name>-<random>:v1``: (its ``kraken.cli.image.Layout``, the repository)."""
    from kraken.cli.image import write_layout

    layout = write_layout(path, layers=layers, random_layer_size=layer_size, seed=f"{name}-{os.urandom(8).hex()}")
    repo = f"integration/{name}-{os.urandom(4).hex()}"
    target = f"docker://{registry}/{repo}:v1"
    skopeo("copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{layout.path}:v1", target)
    return layout, repo
