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
- ``herd_launcher``: private herds for one test, with ``extra`` configuration
  deep-merged over the generated one (``{"origin": {"backends": [...]}}``),
  and ``restart(herd)`` on the same ports, state directory and configuration.
  ``Herd.wait_for_lines`` waits for log lines (an event, not a polling loop).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
import yaml
from hypothesis import HealthCheck, settings
from processes import OutputReader

# Property tests check behaviour, not speed: on a busy 2-core CI machine Hypothesis's own timing checks
# (the per-example deadline, "too slow" data generation) would fail them for reasons outside the code.
settings.register_profile("kraken", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("kraken")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERD_READY = "kraken-herd ready"
HERD_START_TIMEOUT = 60.0  # seconds; a backstop, the fixture waits for the ready line
HERD_STOP_TIMEOUT = 30.0
# Test herds cap their origin's P2P egress (25 MB/s), so agents pulling together gain by trading pieces.
ORIGIN_EGRESS_BITS = 200_000_000


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


@dataclass(frozen=True)
class HerdPorts:
    """Every port of a test herd: free ones from ``HerdPorts.free``; agent k listens on ``agent_base + 1000k``
    (registry), ``+1`` (P2P) and ``+2`` (agent API), as in the herd's own layout."""

    proxy: int
    origin: int
    build_index: int
    tracker: int
    origin_p2p: int
    agent_base: int
    agents: int

    @classmethod
    def free(cls, agents: int) -> HerdPorts:
        ports = free_ports(5)
        # Those five were released when probed: keep the agents' block clear of them.
        return cls(*ports, agent_base=free_agent_base(agents, avoid=set(ports)), agents=agents)

    def agent(self, k: int) -> tuple[int, int, int]:
        """(registry, P2P, API) ports of agent ``k``."""
        first = self.agent_base + 1000 * k
        return first, first + 1, first + 2


@dataclass
class Herd:
    """A running ``kraken-herd``; ``registry``/``url`` address its proxy (the Docker registry API)."""

    host: str
    ports: HerdPorts
    state_dir: str
    config_path: str
    log_path: str
    process: subprocess.Popen[bytes]
    output: OutputReader = field(repr=False)
    base_dir: str = ""
    extra: Mapping[str, Any] | None = None

    @property
    def proxy_port(self) -> int:
        return self.ports.proxy

    @property
    def registry(self) -> str:
        return f"{self.host}:{self.ports.proxy}"

    @property
    def url(self) -> str:
        return f"http://{self.registry}"

    @property
    def origin_url(self) -> str:
        return f"http://{self.host}:{self.ports.origin}"

    @property
    def build_index_url(self) -> str:
        return f"http://{self.host}:{self.ports.build_index}"

    @property
    def tracker_url(self) -> str:
        return f"http://{self.host}:{self.ports.tracker}"

    def agent_registry(self, k: int) -> str:
        """host:port of agent ``k``'s read-only registry."""
        return f"{self.host}:{self.ports.agent(k)[0]}"

    def agent_api(self, k: int) -> str:
        return f"http://{self.host}:{self.ports.agent(k)[2]}"

    def log_lines(self, start: int = 0) -> list[str]:
        return self.output.snapshot(start)

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_for_lines(self, done: Callable[[str], bool], start: int = 0, timeout: float = 60.0) -> bool:
        """Wait until ``done`` returns True for one of the herd's output lines from index ``start`` on
        (``done`` sees each line once, in order). False if the herd's output ended first, or after
        ``timeout`` seconds (a backstop)."""
        return self.output.wait_for(done, start, timeout)


def free_agent_base(agents: int, avoid: frozenset[int] | set[int] = frozenset()) -> int:
    """A port p with p+1000k+{0,1,2} free for every agent k (probed by binding them all at once), none of them
    in ``avoid`` (ports already handed out, free only until their daemon binds them)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - 1000 * max(agents, 1), 3)
        if any(base + 1000 * k + i in avoid for k in range(agents) for i in range(3)):
            continue
        socks: list[socket.socket] = []
        try:
            for k in range(agents):
                for port in range(base + 1000 * k, base + 1000 * k + 3):
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    socks.append(s)
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block of agent ports found")


def merge_config(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` deep-merged over it (maps merge, anything else replaces), as ``extends:`` does."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged


def herd_config(state_dir: str, ports: HerdPorts, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A test herd's configuration: loopback listeners on ``ports``, state in ``state_dir``, the origin's
    P2P egress capped; ``extra`` (e.g. ``{"origin": {"backends": [...]}}``) is deep-merged over it."""
    loopback = "interface=127.0.0.1"
    config: dict[str, Any] = {
        "state_dir": state_dir,
        "proxy": {"listen_http": f"tcp:{ports.proxy}:{loopback}"},
        "origin": {
            "listen_http": f"tcp:{ports.origin}:{loopback}",
            "p2p": {
                "listen": f"tcp:{ports.origin_p2p}:{loopback}",
                "bandwidth": {"enabled": True, "egress_bits_per_sec": ORIGIN_EGRESS_BITS},
            },
        },
        "tracker": {"listen_http": f"tcp:{ports.tracker}:{loopback}"},
        "build_index": {"listen_http": f"tcp:{ports.build_index}:{loopback}"},
        "agents": ports.agents,
        "agent_base_port": ports.agent_base,
    }
    return merge_config(config, extra or {})


def write_herd_config(path: str, state_dir: str, ports: HerdPorts, extra: Mapping[str, Any] | None = None) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(herd_config(state_dir, ports, extra), f, sort_keys=False)


def start_herd(
    base_dir: str, ports: HerdPorts | None = None, *, agents: int = 3, extra: Mapping[str, Any] | None = None
) -> Herd:
    """Start ``twistd -n --pidfile= kraken-herd`` in ``base_dir`` and wait for its ready line.

    ``ports`` default to free ones (with ``agents`` agents); the state lives in ``base_dir/state``, so a herd
    started again on the same ``base_dir`` (and ``ports``) finds what the previous one stored. ``extra`` is
    deep-merged over the generated configuration (see ``herd_config``).
    """
    state_dir = os.path.join(base_dir, "state")
    config_path = os.path.join(base_dir, "herd.yaml")
    os.makedirs(state_dir, exist_ok=True)
    runs = sum(1 for name in os.listdir(base_dir) if name.startswith("herd-") and name.endswith(".log"))
    log_path = os.path.join(base_dir, f"herd-{runs + 1}.log")
    ports = ports or HerdPorts.free(agents)
    write_herd_config(config_path, state_dir, ports, extra)
    process = subprocess.Popen(
        twistd_command("kraken-herd", "--config", config_path),
        cwd=REPO_ROOT,
        env=herd_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output = OutputReader(process.stdout, log_path, HERD_READY)
    herd = Herd("127.0.0.1", ports, state_dir, config_path, log_path, process, output, base_dir, extra)
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
    """Private herds for one test: ``start(base_dir, ports=None, agents=3, extra=None)``, ``stop(herd)`` and
    ``restart(herd)`` (the same ports, state directory and configuration); all stopped at the end."""

    def __init__(self) -> None:
        self._started: list[Herd] = []

    def start(
        self,
        base_dir: str,
        ports: HerdPorts | None = None,
        *,
        agents: int = 3,
        extra: Mapping[str, Any] | None = None,
    ) -> Herd:
        herd = start_herd(base_dir, ports, agents=agents, extra=extra)
        self._started.append(herd)
        return herd

    def stop(self, herd: Herd) -> int:
        return stop_herd(herd)

    @staticmethod
    def free_ports(agents: int) -> HerdPorts:
        """Ports for a herd of ``agents`` agents, to write its configuration before ``start``."""
        return HerdPorts.free(agents)

    def restart(self, herd: Herd) -> Herd:
        """Stop ``herd`` if it runs, then start a new one on its ports, state directory and configuration."""
        self.stop(herd)
        return self.start(herd.base_dir, herd.ports, agents=herd.ports.agents, extra=herd.extra)

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
    """One kraken-herd (origin, tracker, build-index, proxy and three agents) for the whole session."""
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
