"""Fixtures shared by the whole test suite.

- ``reactor``: the global reactor, imported lazily (pytest-twisted installs it).
- An autouse leak check: after every test that runs on the reactor
  (``@pytest_twisted.ensureDeferred`` / ``inlineCallbacks`` tests, or any test
  asking for ``reactor``), no DelayedCall may still be active. pytest-twisted
  has no such check (pytest-dev/pytest-twisted#43); a left-open persistent
  ``HTTPConnectionPool`` or a ``Site`` idle timer shows up here.
- ``http``: one ``treq.HTTPClient`` with its own ``HTTPConnectionPool`` per
  test, closed (and awaited) at the end.
- ``herd``: one ``twistd -n kraken-herd`` process for the whole session, on
  free loopback ports, with its state in a temporary directory. The fixture
  reads the child's output in a thread, returns once the ``kraken-herd ready``
  line is seen (a timeout is only the backstop) and stops the process at the
  end. When a test fails, the herd's output since that test started is added
  to the report.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERD_READY = "kraken-herd ready"
HERD_START_TIMEOUT = 60.0  # seconds; a backstop, the fixture waits for the ready line
HERD_STOP_TIMEOUT = 30.0


# --------------------------------------------------------------------------- reactor and leak check


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as _reactor

    return _reactor


def _runs_on_reactor(request: pytest.FixtureRequest) -> bool:
    function = getattr(request.node, "function", None)
    mark = getattr(function, "_pytest_twisted_mark", None)  # set by pytest_twisted's test decorators
    return mark in ("async_test", "inline_callbacks_test") or "reactor" in request.fixturenames


@pytest.fixture(autouse=True)
def _no_pending_delayed_calls(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a reactor test that leaves an active DelayedCall behind (and cancel it)."""
    yield
    if not _runs_on_reactor(request):
        return
    from twisted.internet import reactor as _reactor

    active = [call for call in _reactor.getDelayedCalls() if call.active()]
    if active:
        described = "\n".join(f"  {call!r}" for call in active)
        for call in active:
            call.cancel()
        pytest.fail(f"test left {len(active)} active DelayedCall(s) on the reactor:\n{described}", pytrace=False)


# --------------------------------------------------------------------------- HTTP client


@pytest_twisted.async_yield_fixture()
async def http(reactor: Any) -> Any:
    """A treq client with a private persistent pool, closed when the test ends."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 4
    client = HTTPClient(Agent(reactor, pool=pool))
    try:
        yield client
    finally:
        await pool.closeCachedConnections()


# --------------------------------------------------------------------------- the herd process


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (bound together, then released)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def herd_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def twistd_command(*args: str) -> list[str]:
    """``twistd -n --pidfile= <args>``, with the twistd of this interpreter."""
    beside = os.path.join(os.path.dirname(sys.executable), "twistd")
    twistd = beside if os.access(beside, os.X_OK) else shutil.which("twistd") or "twistd"
    return [twistd, "-n", "--pidfile=", *args]


class OutputReader:
    """Drains a child's stdout in a thread: keeps every line, writes a log file, signals the ready line.

    The thread keeps the pipe empty whatever the tests do with the main
    thread (a synchronous test blocking on skopeo must not stall the herd on
    a full pipe).
    """

    def __init__(self, stream: Any, log_path: str, ready_marker: str) -> None:
        self._stream = stream
        self._log_path = log_path
        self._marker = ready_marker
        self._lock = threading.Lock()
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.settled = threading.Event()  # ready, or the output ended
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._run, name="herd-output", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with open(self._log_path, "w", encoding="utf-8", errors="replace") as log:
            for raw in iter(self._stream.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                with self._lock:
                    self.lines.append(line)
                if self._marker in line and not self.ready.is_set():
                    self.ready.set()
                    self.settled.set()
        self.ended.set()
        self.settled.set()

    def snapshot(self, start: int = 0) -> list[str]:
        with self._lock:
            return self.lines[start:]

    def count(self) -> int:
        with self._lock:
            return len(self.lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


@dataclass
class Herd:
    """A running ``kraken-herd``; ``registry``/``url`` address its proxy (the Docker registry API)."""

    host: str
    proxy_port: int
    origin_port: int
    build_index_port: int
    state_dir: str
    config_path: str
    log_path: str
    process: subprocess.Popen[bytes]
    output: OutputReader = field(repr=False)

    @property
    def registry(self) -> str:
        return f"{self.host}:{self.proxy_port}"

    @property
    def url(self) -> str:
        return f"http://{self.registry}"

    @property
    def origin_url(self) -> str:
        return f"http://{self.host}:{self.origin_port}"

    @property
    def build_index_url(self) -> str:
        return f"http://{self.host}:{self.build_index_port}"

    def log_lines(self, start: int = 0) -> list[str]:
        return self.output.snapshot(start)

    def alive(self) -> bool:
        return self.process.poll() is None


def write_herd_config(path: str, state_dir: str, proxy: int, origin: int, build_index: int) -> None:
    with open(path, "w") as f:
        f.write(
            f'state_dir: "{state_dir}"\n'
            f'proxy: {{listen_http: "tcp:{proxy}:interface=127.0.0.1"}}\n'
            f'origin: {{listen_http: "tcp:{origin}:interface=127.0.0.1"}}\n'
            f'build_index: {{listen_http: "tcp:{build_index}:interface=127.0.0.1"}}\n'
        )


def start_herd(base_dir: str, ports: tuple[int, int, int] | None = None) -> Herd:
    """Start ``twistd -n --pidfile= kraken-herd`` in ``base_dir`` and wait for its ready line.

    ``ports`` (proxy, origin, build-index) default to free ones; the state
    lives in ``base_dir/state``, so a herd started again on the same
    ``base_dir`` finds what the previous one stored.
    """
    state_dir = os.path.join(base_dir, "state")
    config_path = os.path.join(base_dir, "herd.yaml")
    os.makedirs(state_dir, exist_ok=True)
    runs = sum(1 for name in os.listdir(base_dir) if name.startswith("herd-") and name.endswith(".log"))
    log_path = os.path.join(base_dir, f"herd-{runs + 1}.log")
    proxy, origin, build_index = ports or free_ports(3)
    write_herd_config(config_path, state_dir, proxy, origin, build_index)
    process = subprocess.Popen(
        twistd_command("kraken-herd", "--config", config_path),
        cwd=REPO_ROOT,
        env=herd_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output = OutputReader(process.stdout, log_path, HERD_READY)
    herd = Herd("127.0.0.1", proxy, origin, build_index, state_dir, config_path, log_path, process, output)
    output.settled.wait(HERD_START_TIMEOUT)
    if not output.ready.is_set():
        stop_herd(herd)
        log = "\n".join(output.snapshot())
        why = "exited" if output.ended.is_set() else f"was not ready after {HERD_START_TIMEOUT:.0f}s"
        raise RuntimeError(f"kraken-herd {why} (rc={process.returncode}); its output:\n{log}")
    return herd


def stop_herd(herd: Herd) -> int:
    """SIGTERM, then wait (SIGKILL after a timeout); returns the exit status. Stopping twice is harmless."""
    if herd.process.poll() is None:
        herd.process.send_signal(signal.SIGTERM)
        try:
            herd.process.wait(HERD_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            herd.process.kill()
            herd.process.wait()
    herd.output.join(HERD_STOP_TIMEOUT)
    if herd.process.stdout is not None:
        herd.process.stdout.close()
    return herd.process.returncode


@dataclass(frozen=True)
class Twistd:
    """How the tests run ``twistd``: the command line, the environment and the working directory."""

    cwd: str = REPO_ROOT

    def command(self, *args: str) -> list[str]:
        return twistd_command(*args)

    @property
    def env(self) -> dict[str, str]:
        return herd_env()


@pytest.fixture(scope="session")
def twistd() -> Twistd:
    return Twistd()


class HerdLauncher:
    """Private herds for one test: ``start(base_dir, ports=None)`` and ``stop(herd)``; all stopped at the end."""

    def __init__(self) -> None:
        self._started: list[Herd] = []

    def start(self, base_dir: str, ports: tuple[int, int, int] | None = None) -> Herd:
        herd = start_herd(base_dir, ports)
        self._started.append(herd)
        return herd

    def stop(self, herd: Herd) -> int:
        return stop_herd(herd)

    def stop_all(self) -> None:
        for herd in self._started:
            stop_herd(herd)


@pytest.fixture
def herd_launcher() -> Iterator[HerdLauncher]:
    launcher = HerdLauncher()
    yield launcher
    launcher.stop_all()


_running_herd: Herd | None = None


@pytest.fixture(scope="session")
def herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    """One kraken-herd (origin + build-index + proxy) for the whole session."""
    global _running_herd
    herd = start_herd(str(tmp_path_factory.mktemp("herd")))
    _running_herd = herd
    try:
        yield herd
    finally:
        _running_herd = None
        rc = stop_herd(herd)
    # After the session: the herd stops cleanly on SIGTERM (twistd re-raises the signal once it has shut down)
    # and never lost an error in a Deferred.
    lines = herd.log_lines()
    assert rc in (0, -signal.SIGTERM) and any("Server Shut Down" in line for line in lines), (
        f"kraken-herd did not shut down cleanly on SIGTERM (rc={rc}); log in {herd.log_path}:\n"
        + "\n".join(lines[-60:])
    )
    lost = [i for i, line in enumerate(lines) if "Unhandled error in Deferred" in line]
    assert not lost, "kraken-herd logged unhandled errors in Deferreds:\n" + "\n\n".join(
        "\n".join(lines[i : i + 25]) for i in lost[:5]
    )


@pytest.fixture(autouse=True)
def _herd_log_position(request: pytest.FixtureRequest) -> None:
    """Remember where the herd's output stood when the test started (for failure reports)."""
    if _running_herd is not None:
        request.node._herd_log_start = _running_herd.output.count()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    herd = _running_herd
    if herd is None or not report.failed:
        return
    start = getattr(item, "_herd_log_start", 0)
    lines = herd.log_lines(start)
    if len(lines) > 400:
        lines = [f"... {len(lines) - 400} earlier lines in {herd.log_path}", *lines[-400:]]
    state = "running" if herd.alive() else f"exited rc={herd.process.returncode}"
    report.sections.append((f"kraken-herd output during this test ({state})", "\n".join(lines) or "(none)"))
