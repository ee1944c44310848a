"""Debian's redis-server (and redis-sentinel) for the tests, as child processes.

``start_redis(work_dir, port=0)`` starts ``redis-server`` on a free loopback port (or the given one, to start
it again where it listened), with no persistence and its files in ``work_dir``, and returns once it says it
is ready (a timeout is only the backstop). ``running_redis(work_dir)`` is the same as a context manager that
always stops it. ``start_sentinel(work_dir, primary_port, master_name)`` starts a Sentinel watching that
primary. ``RedisServer.cli(...)`` runs a ``redis-cli`` command against it; ``peer_store(**redis)`` is a
tracker's ``peer_store`` block with short timeouts and intervals (so that tests wait little for each log line).
A missing program fails the test with a message naming ``.ci/install``: these tests never skip.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from servers import ServerProcess

READY = re.compile(r"Ready to accept connections")
SENTINEL_READY = re.compile(r"\+monitor master")


def _program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run .ci/install (Debian package {name})")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer(ServerProcess):
    """``redis-server`` on 127.0.0.1:``port``; ``address`` is ``127.0.0.1:<port>``."""

    def __init__(self, work_dir: str, port: int = 0, replica_of: int | None = None) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.work_dir = work_dir
        os.makedirs(work_dir, exist_ok=True)
        argv = [_program("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", work_dir]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "notice"]
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        super().__init__(f"redis-{self.port}", argv, READY)

    def cli(self, *command: str) -> str:
        """``redis-cli`` against this server: its output, stripped."""
        argv = [_program("redis-cli"), "-p", str(self.port), *command]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def start_redis(work_dir: str, port: int = 0, replica_of: int | None = None) -> RedisServer:
    return RedisServer(work_dir, port, replica_of)


@contextmanager
def running_redis(work_dir: str, port: int = 0) -> Iterator[RedisServer]:
    server = start_redis(work_dir, port)
    try:
        yield server
    finally:
        server.stop()


class Sentinel(ServerProcess):
    """``redis-sentinel`` on 127.0.0.1:``port`` monitoring the primary on ``primary_port`` as ``master_name``
    (quorum 1; a primary silent for 1 s is failed over)."""

    def __init__(self, work_dir: str, primary_port: int, master_name: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        os.makedirs(work_dir, exist_ok=True)
        conf = os.path.join(work_dir, f"sentinel-{self.port}.conf")
        settings = [
            f"port {self.port}", "bind 127.0.0.1", f"dir {work_dir}",
            f"sentinel monitor {master_name} 127.0.0.1 {primary_port} 1",
            f"sentinel down-after-milliseconds {master_name} 1000",
            f"sentinel failover-timeout {master_name} 5000",
        ]  # fmt: skip
        with open(conf, "w") as f:
            f.write("\n".join(settings) + "\n")
        super().__init__(f"sentinel-{self.port}", [_program("redis-sentinel"), conf], SENTINEL_READY)


def start_sentinel(work_dir: str, primary_port: int, master_name: str) -> Sentinel:
    return Sentinel(work_dir, primary_port, master_name)


def peer_store(**redis: Any) -> dict[str, Any]:
    """A tracker's ``peer_store`` block for Redis (``address=`` or ``sentinel=``), with a 500 ms timeout and
    checks every 200 ms."""
    return {
        "kind": "redis",
        "redis": {"timeout": "500ms", "sync_interval": "100ms", "check_interval": "200ms", **redis},
    }
