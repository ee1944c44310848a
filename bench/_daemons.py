"""Child processes for the benchmarks: a daemon whose output goes to a log file, started and waited for; and
a cluster of them (an origin, a tracker and agents, each its own ``twistd`` process), on loopback or on hosts
of their own."""

from __future__ import annotations

import hashlib
import os
import random
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

READY_TIMEOUT = 60.0


_taken: set[int] = set()
_pick = random.Random()


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (32768 where /proc does not say)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free loopback port not handed out before in this run, below the ephemeral range: a port the OS offers
    for ``bind(0)`` is an ephemeral one, which an outgoing connection may take before the program it was picked
    for binds it ("Address already in use")."""
    high = _ephemeral_low()
    while True:
        port = _pick.randrange(10000, high)
        if port in _taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port


def write_blob(path: str, size: int) -> str:
    """``size`` random bytes in ``path``; returns their digest."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            data = os.urandom(min(left, 1 << 20))
            f.write(data)
            digest.update(data)
            left -= len(data)
    return "sha256:" + digest.hexdigest()


class Daemon:
    """A child process whose output goes to ``log``; construction returns once
    a line containing ``ready`` has appeared (or raises)."""

    def __init__(self, name: str, argv: list[str], log: str, ready: str, *, wait: bool = True) -> None:
        """``wait=False``: return at once; call ``wait_ready`` later (to start many daemons in parallel).
        An empty ``ready``: nothing to wait for (the output is drained to ``log`` from the start)."""
        self.name = name
        self.log = log
        self._ready = ready
        self._out = open(log, "wb")
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        if wait or not ready:
            self.wait_ready()

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        fd = self.proc.stdout.fileno()
        seen = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while self._ready.encode() not in seen:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise RuntimeError(f"{self.name} not ready after {READY_TIMEOUT}s; see {self.log}")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited early; see {self.log}")
                self._out.write(chunk)
                seen = seen[-4096:] + chunk
        self._out.flush()
        self._drain = threading.Thread(target=shutil.copyfileobj, args=(self.proc.stdout, self._out), daemon=True)
        self._drain.start()

    def peak_rss(self) -> int:
        return memory(self.proc.pid, "VmHWM")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        end(self.proc, sig)
        if hasattr(self, "_drain"):
            self._drain.join(10)
        self._out.close()


def memory(pid: int, field: str) -> int:
    """A memory figure of a process in bytes, from ``/proc/<pid>/status``: ``VmRSS`` (resident now),
    ``VmHWM`` (its peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def end(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to a child that still runs and wait for it (30 s, then SIGKILL)."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat; the busy share of two readings'
    difference is the machine's CPU use in between."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def busy_between(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def twistd(plugin: str, config: str) -> list[str]:
    return [TWISTD, "-n", "--pidfile=", plugin, "--config", config]


def write_config(work: str, name: str, text: str) -> str:
    """``text`` written to ``work/name.yaml``; returns its path."""
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def emit(text: str, out: str | None) -> None:
    """A benchmark's Markdown on stdout and, with ``out``, appended to that file after a blank line."""
    print(text)
    if out:
        with open(out, "a") as f:
            f.write("\n" + text)


@dataclass(frozen=True)
class BenchTLS:
    """TLS material for a secure benchmark run: kraken/cli/certs.py's development CA under ``<work>/certs`` and
    one certificate (``node``, SANs 127.0.0.1, ::1, localhost) that every daemon and the bench's own clients use;
    ``credentials`` (user, password) are in the htpasswd file ``htpasswd`` (bcrypt), for a proxy's Basic auth."""

    ca: str
    trust_dir: str
    cert: str
    key: str
    htpasswd: str
    credentials: tuple[str, str]

    @classmethod
    def make(cls, work: str) -> BenchTLS:
        import bcrypt

        from kraken.cli.certs import ensure_dev_ca  # bench scripts put the repository on sys.path first

        dev = ensure_dev_ca(os.path.join(work, "certs"), ["node"])
        cert, key = dev.pairs["node"]
        user, password = "pusher", os.urandom(12).hex()
        htpasswd = os.path.join(work, "htpasswd")
        with open(htpasswd, "w") as f:
            f.write(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
        return cls(dev.ca, dev.trust_dir, cert, key, htpasswd, (user, password))

    def block(self, *, mutual: bool = True) -> str:
        """A daemon's ``tls:`` block (YAML flow mapping): its certificate, the CA it trusts and, ``mutual``,
        client certificates required on its listeners."""
        block = f"{{ca: '{self.ca}', cert: '{self.cert}', key: '{self.key}'"
        if mutual:
            block += f", client_ca: '{self.ca}', require_client_cert: true"
        return block + "}"

    def context(self) -> ssl.SSLContext:
        """A client context for the bench's own requests: trusts the CA, presents the node certificate."""
        context = ssl.create_default_context(cafile=self.ca)
        context.load_cert_chain(self.cert, self.key)
        return context

    def curl(self) -> list[str]:
        """curl's options for the same."""
        return ["--cacert", self.ca, "--cert", self.cert, "--key", self.key]


@dataclass(frozen=True)
class Place:
    """Where a daemon runs: its address, and the argv prefix that starts a command there. On loopback (the
    default) every daemon shares 127.0.0.1 and takes free ports; on a host of its own (a network namespace,
    bench/netns.py) it takes the default ports and listens on every interface of that host, its loopback
    included, so that uploads and checks run inside the host do not cross its capped link."""

    ip: str = "127.0.0.1"
    prefix: tuple[str, ...] = ()

    @property
    def own_host(self) -> bool:
        return bool(self.prefix)

    def port(self, default: int) -> int:
        return default if self.own_host else free_port()

    def listen(self, port: int) -> str:
        return f"tcp:{port}" if self.own_host else f"tcp:{port}:interface={self.ip}"

    def local_url(self, port: int, scheme: str = "http") -> str:
        """A URL of this host's port, for a command started with ``prefix``."""
        return f"{scheme}://127.0.0.1:{port}"


@dataclass
class Agent:
    daemon: Daemon
    api: int
    place: Place = Place()
    registry: int = 0


class Cluster:
    """An origin, a tracker and ``agents`` agents, each its own ``twistd`` process (started together, then
    waited for): all on loopback, or each at the ``places`` given (origin, tracker, then one per agent).
    ``rate``: every daemon's P2P bandwidth limit each way, in bits per second (None: no limits); ``piece``: the
    origin's piece length for every blob (None: its default piece lengths). ``tls``: every daemon gets its
    ``tls`` block (mutual TLS on every HTTP listener) and P2P runs over TLS (``p2p: {tls: true}``); loopback only
    (the certificate's SANs are the loopback addresses). ``agent_p2p``: more keys of every agent's ``p2p`` block
    (``stream_window: 8``)."""

    def __init__(
        self,
        work: str,
        agents: int,
        rate: int | None,
        piece: int | None,
        places: list[Place] | None = None,
        tls: BenchTLS | None = None,
        agent_p2p: str = "",
    ) -> None:
        self.work = work
        self.tls = tls
        self.scheme = scheme = "https" if tls else "http"
        secure = f"tls: {tls.block()}\n" if tls else ""
        p2p_tls = ", tls: true" if tls else ""
        os.makedirs(work, exist_ok=True)
        places = places or [Place()] * (agents + 2)
        if len(places) < agents + 2:
            raise ValueError(f"{agents} agents need {agents + 2} places, not {len(places)}")
        self.origin, self.tracker = places[0], places[1]
        bandwidth = (
            f"bandwidth: {{enabled: true, egress_bits_per_sec: {rate}, ingress_bits_per_sec: {rate}}}"
            if rate
            else "bandwidth: {enabled: false}"
        )
        pieces = f", piece_lengths: {{0: {piece}}}" if piece else ""
        o, t = self.origin, self.tracker
        self.origin_http, origin_p2p, self.tracker_http = o.port(15002), o.port(15001), t.port(15003)
        origin = write_config(
            work,
            "origin",
            f"listen_http: '{o.listen(self.origin_http)}'\nadvertise: '{o.ip}:{self.origin_http}'\n"
            f"store: {{root: {work}/origin{pieces}}}\n"
            f"p2p: {{listen: '{o.listen(origin_p2p)}', advertise: '{o.ip}:{origin_p2p}', {bandwidth}{p2p_tls}}}\n"
            + secure,
        )
        tracker = write_config(
            work,
            "tracker",
            f"listen_http: '{t.listen(self.tracker_http)}'\norigin: '{scheme}://{o.ip}:{self.origin_http}'\n" + secure,
        )
        self.origin_daemon = Daemon("origin", [*o.prefix, *twistd("kraken-origin", origin)], f"{work}/origin.log",
                                    "origin P2P listening", wait=False)  # fmt: skip
        self.daemons = [
            self.origin_daemon,
            Daemon("tracker", [*t.prefix, *twistd("kraken-tracker", tracker)], f"{work}/tracker.log",
                   "tracker listening", wait=False),
        ]  # fmt: skip
        self.agents: list[Agent] = []
        for k in range(agents):
            a = places[k + 2]
            registry, api, p2p = a.port(16000), a.port(16002), a.port(16001)
            config = write_config(
                work,
                f"agent-{k}",
                f"listen_registry: '{a.listen(registry)}'\n"
                # On a namespace host of its own the agent listens on every interface, its loopback included.
                + ("allow_remote_registry: true\n" if a.own_host else "")
                + f"listen_api: '{a.listen(api)}'\n"
                f"tracker: '{scheme}://{t.ip}:{self.tracker_http}'\n"
                f"build_index: 'http://127.0.0.1:{free_port()}'\n"  # unused: blobs by digest only
                f"store: {{root: {work}/agent-{k}}}\n"
                f"p2p: {{listen: '{a.listen(p2p)}', advertise: '{a.ip}:{p2p}', {bandwidth}{p2p_tls}"
                + (f", {agent_p2p}" if agent_p2p else "")
                + "}\n"
                + secure,
            )
            daemon = Daemon(f"agent-{k}", [*a.prefix, *twistd("kraken-agent", config)], f"{work}/agent-{k}.log",
                            "agent P2P listening", wait=False)  # fmt: skip
            self.agents.append(Agent(daemon, api, a, registry))
            self.daemons.append(daemon)
        try:
            for daemon in self.daemons:
                daemon.wait_ready()
        except BaseException:
            self.stop()
            raise

    def cpu(self) -> float:
        """CPU seconds all daemons have used so far."""
        return sum(cpu_seconds(d.proc.pid) for d in self.daemons)

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
