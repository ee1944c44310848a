"""A private containerd for the integration tests, and the hosts.toml mirror files it reads.

- ``containerd``, the fixture ``containerd_fixture`` (import that into a test module): ``containerd --config``
  with its root, state and sockets under ``tmp_path/containerd`` and the CRI plugin disabled (no kubelet
  here). It is ready once ``ctr version`` answers on its socket (asked again on the reactor until it does; a
  deadline is only the backstop) and is always stopped when the test ends (SIGTERM, SIGKILL after a backstop).
- ``Containerd.ctr(...)`` runs ``ctr --address <its socket> ...`` without blocking the reactor;
  ``image_digest`` and ``content_digests`` read what it stored.
- ``write_hosts(directory, registry, hosts, server=...)`` writes ``directory/<registry>/hosts.toml``, the
  certs.d layout that ``ctr images pull --hosts-dir directory`` reads: each ``MirrorHost`` with its
  capabilities, an optional ``ca`` and an optional ``client`` certificate and key. ``skip_verify`` is never
  written: a test that needs TLS gives containerd the CA.

Runs as root (containerd's overlayfs snapshotter unpacks the pulled layers).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest_twisted
from twisted.internet import defer, error, protocol, task

from ._tools import run_process

START_TIMEOUT = 60.0  # seconds; backstops
STOP_TIMEOUT = 30.0
CTR_TIMEOUT = 300.0
RETRY_DELAY = 0.05  # between two ``ctr version`` while containerd starts
SOCKET_PATH_MAX = 100  # a unix socket path longer than about 107 bytes cannot be bound

_CONFIG = """\
version = 2
root = {root}
state = {state}
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = {socket}
[ttrpc]
  address = {ttrpc}
[debug]
  address = ""
[metrics]
  address = ""
"""


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


@dataclass(frozen=True)
class MirrorHost:
    """One ``[host."<url>"]`` of a hosts.toml: ``url`` is ``https://host:port`` or ``http://host:port``."""

    url: str
    capabilities: tuple[str, ...] = ("pull", "resolve")
    ca: str | None = None  # a PEM file of the CA(s) that signed the host's certificate
    client: tuple[str, str] | None = None  # (certificate, key): containerd presents them when asked

    def toml(self) -> str:
        lines = [f"[host.{_toml_string(self.url)}]"]
        lines.append(f"  capabilities = [{', '.join(_toml_string(c) for c in self.capabilities)}]")
        if self.ca is not None:
            lines.append(f"  ca = {_toml_string(self.ca)}")
        if self.client is not None:
            cert, key = self.client
            lines.append(f"  client = [[{_toml_string(cert)}, {_toml_string(key)}]]")
        return "\n".join(lines) + "\n"


def write_hosts(directory: str, registry: str, hosts: Sequence[MirrorHost], server: str | None = None) -> str:
    """Write ``directory/<registry>/hosts.toml`` (``registry`` as in image names, ``host:port`` included, or
    ``_default``): the ``hosts`` in order, then ``server`` (when given) as the upstream containerd tries last.
    Returns ``directory``, what ``--hosts-dir`` takes."""
    folder = os.path.join(directory, registry)
    os.makedirs(folder, exist_ok=True)
    parts = [f"server = {_toml_string(server)}\n"] if server is not None else []
    parts += [host.toml() for host in hosts]
    with open(os.path.join(folder, "hosts.toml"), "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return directory


@dataclass(frozen=True)
class Ctr:
    """What one ``ctr`` run gave."""

    argv: tuple[str, ...]
    code: int
    out: str
    err: str

    def check(self) -> Ctr:
        assert self.code == 0, f"{' '.join(self.argv)} exited {self.code}:\n{self.err[-4000:]}\n{self.out[-2000:]}"
        return self


class _Daemon(protocol.ProcessProtocol):
    """containerd's output into a log file; ``ended`` fires with its exit code."""

    def __init__(self, log_path: str) -> None:
        self.log = open(log_path, "ab")
        self.exit_code: int | None = None
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.log.write(data)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.log.close()
        value = reason.value
        code = value.exitCode if isinstance(value, (error.ProcessDone, error.ProcessTerminated)) else None
        self.exit_code = -1 if code is None else code
        self.ended.callback(self.exit_code)


@dataclass
class Containerd:
    """A running private containerd: ``address`` is its gRPC socket, ``log_path`` its output."""

    reactor: Any
    directory: str
    address: str
    log_path: str
    _daemon: _Daemon = field(repr=False)
    _transport: Any = field(repr=False)
    _socket_dir: str | None = field(default=None, repr=False)  # a short folder of ours, removed on stop

    async def ctr(self, *args: str, timeout: float = CTR_TIMEOUT) -> Ctr:
        argv = (shutil.which("ctr") or "ctr", "--address", self.address, *args)
        code, out, err = await run_process(self.reactor, list(argv), timeout=timeout)
        return Ctr(argv, code, out.decode(errors="replace"), err.decode(errors="replace"))

    async def image_digest(self, name: str) -> str | None:
        """The target digest of image ``name`` (``ctr images ls``), None when containerd has no such image."""
        listing = (await self.ctr("images", "ls")).check().out
        for row in listing.splitlines()[1:]:
            columns = row.split()
            if columns and columns[0] == name:
                return columns[2]
        return None

    async def content_digests(self) -> set[str]:
        """Every blob in containerd's content store (``ctr content ls -q``)."""
        return set((await self.ctr("content", "ls", "-q")).check().out.split())

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    async def wait_ready(self) -> None:
        """Until ``ctr version`` answers on the socket; fails with the log if containerd exits first."""
        deadline = self.reactor.seconds() + START_TIMEOUT
        while True:
            if self._daemon.exit_code is not None:
                raise RuntimeError(f"containerd exited {self._daemon.exit_code}:\n{self.log()[-4000:]}")
            answer = await self.ctr("version", timeout=START_TIMEOUT)
            if answer.code == 0:
                return
            if self.reactor.seconds() > deadline:
                raise RuntimeError(f"containerd not ready after {START_TIMEOUT:.0f}s: {answer.err}\n{self.log()}")
            await task.deferLater(self.reactor, RETRY_DELAY, lambda: None)

    async def stop(self) -> int:
        """SIGTERM (SIGKILL after a backstop); returns the exit code. Removes the socket folder we made."""
        try:
            if self._daemon.exit_code is None:
                self._transport.signalProcess("TERM")
                killer = self.reactor.callLater(STOP_TIMEOUT, self._kill)
                try:
                    await self._daemon.ended
                finally:
                    if killer.active():
                        killer.cancel()
            assert self._daemon.exit_code is not None
            return self._daemon.exit_code
        finally:
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)

    def _kill(self) -> None:
        try:
            self._transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass


def _socket_dir(directory: str) -> tuple[str, str | None]:
    """Where the sockets go: ``directory``, or a short folder of ours when that path is too long to bind."""
    if len(os.path.join(directory, "containerd.sock.ttrpc")) <= SOCKET_PATH_MAX:
        return directory, None
    short = tempfile.mkdtemp(prefix="ctrd-")
    return short, short


def _write_config(directory: str, address: str) -> str:
    """``directory/config.toml``: root and state under ``directory``, gRPC on ``address``; returns its path."""
    path = os.path.join(directory, "config.toml")
    paths = {"root": os.path.join(directory, "root"), "state": os.path.join(directory, "state")}
    paths.update(socket=address, ttrpc=address + ".ttrpc")
    with open(path, "w", encoding="utf-8") as f:
        f.write(_CONFIG.format(**{key: _toml_string(value) for key, value in paths.items()}))
    return path


async def start_containerd(reactor: Any, directory: str) -> Containerd:
    """Start a private containerd under ``directory`` (made if missing) and wait until it answers."""
    os.makedirs(directory, exist_ok=True)
    sockets, ours = _socket_dir(directory)
    address = os.path.join(sockets, "containerd.sock")
    config_path = _write_config(directory, address)
    log_path = os.path.join(directory, "containerd.log")
    daemon = _Daemon(log_path)
    executable = shutil.which("containerd") or "containerd"
    argv = [executable, "--config", config_path]
    transport = reactor.spawnProcess(daemon, executable, argv, env=dict(os.environ))
    started = Containerd(reactor, directory, address, log_path, daemon, transport, ours)
    try:
        await started.wait_ready()
    except BaseException:
        await started.stop()
        raise
    return started


@pytest_twisted.async_yield_fixture(name="containerd")
async def containerd_fixture(reactor: Any, tmp_path: Any) -> AsyncIterator[Containerd]:
    """A private containerd under ``tmp_path/containerd``, stopped when the test ends."""
    started = await start_containerd(reactor, str(tmp_path / "containerd"))
    try:
        yield started
    finally:
        await started.stop()
