"""Child processes for the benchmarks: a daemon whose output goes to a log file, started and waited for."""

from __future__ import annotations

import hashlib
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

READY_TIMEOUT = 60.0


_taken: set[int] = set()


def free_port() -> int:
    """A free loopback port not handed out before in this run (the OS may offer a just-released port again)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _taken:
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
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if hasattr(self, "_drain"):
            self._drain.join(10)
        self._out.close()


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
