"""Real storage servers for the tests: moto's S3 server and Debian's docker-registry.

Each is started as a child process on a port the OS picks (or a given one, to
start a server again where the previous one listened); its output is drained
by an ``OutputReader`` thread, which signals the line saying where it listens
(a timeout is only the backstop). A missing program fails the test with a
message naming ``.ci/install``: these tests never skip.

- ``start_moto(port=0)`` -> ``MotoServer`` (``url``, ``port``, ``stop()``,
  ``create_bucket()``, ``objects()``, ``get()``); moto keeps its state in
  memory, so a server started again on the same port has no buckets.
- ``start_docker_registry(work_dir)`` -> ``DockerRegistry`` (``url``,
  ``address``, ``stop()``), with filesystem storage under ``work_dir``.
- ``running_moto()`` / ``running_docker_registry(work_dir)``: the same as
  context managers, for fixtures.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from processes import OutputReader

START_TIMEOUT = 60.0  # seconds; a backstop, the helpers wait for the line saying where the server listens
STOP_TIMEOUT = 30.0
# moto accepts any credentials (it checks no signature); the tests use these.
S3_ACCESS_KEY = "kraken-test"
S3_SECRET_KEY = "kraken-test-secret"
S3_REGION = "us-east-1"


class ServerProcess:
    """A child process whose output an ``OutputReader`` drains (and a test waits on); ``stop()`` ends it
    (twice is harmless)."""

    def __init__(self, name: str, argv: list[str], ready: re.Pattern[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        assert self.process.stdout is not None
        self.output = OutputReader(self.process.stdout, None, ready, name=f"{name}-output")
        self.output.settled.wait(START_TIMEOUT)
        if self.output.match is None:
            self.stop()
            raise RuntimeError(
                f"{name} did not start (rc={self.process.returncode}):\n" + "\n".join(self.output.snapshot())
            )
        self.match: re.Match[str] = self.output.match

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.join(STOP_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


# --------------------------------------------------------------------------- moto's S3 server


def moto_command(port: int = 0) -> list[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "moto_server")
    if not os.access(beside, os.X_OK):
        pytest.fail("moto_server is not installed: run .ci/install (moto[server] is in the test extras)")
    return [beside, "-H", "127.0.0.1", "-p", str(port)]


class MotoServer(ServerProcess):
    """``moto_server`` on 127.0.0.1; ``url`` is ``http://127.0.0.1:<port>``."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(
            "moto_server",
            moto_command(port),
            re.compile(r"Running on (http://\S+)"),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.url = self.match.group(1).rstrip("/")
        self.port = int(self.url.rsplit(":", 1)[1])

    def client(self) -> Any:
        """A boto3 S3 client of this server (blocking; for test set-up and checks)."""
        import boto3  # installed with moto

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=S3_REGION,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
        )

    def create_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)

    def objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every key under ``prefix`` in ``bucket`` and its size."""
        found: dict[str, int] = {}
        paginator = self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = int(item["Size"])
        return found

    def get(self, bucket: str, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body


def start_moto(port: int = 0) -> MotoServer:
    """A moto S3 server on ``port`` (0: one the OS picks)."""
    return MotoServer(port)


@contextmanager
def running_moto(port: int = 0) -> Iterator[MotoServer]:
    server = start_moto(port)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- docker-registry


def docker_registry_binary() -> str:
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("docker-registry is not installed: run .ci/install (it installs Debian's docker-registry)")
    return binary


class DockerRegistry(ServerProcess):
    """``docker-registry serve`` on 127.0.0.1 with filesystem storage under ``work_dir/data``;
    ``address`` is ``127.0.0.1:<port>``, ``url`` the same with ``http://``."""

    def __init__(self, work_dir: str) -> None:
        binary = docker_registry_binary()
        os.makedirs(work_dir, exist_ok=True)
        config = os.path.join(work_dir, "config.yml")
        with open(config, "w") as f:
            f.write(
                "version: 0.1\n"
                "log: {level: info, formatter: text}\n"
                f"storage: {{filesystem: {{rootdirectory: {os.path.join(work_dir, 'data')}}}}}\n"
                "http: {addr: '127.0.0.1:0', secret: kraken-test}\n"
            )
        super().__init__("docker-registry", [binary, "serve", config], re.compile(r"listening on (\S+?)\"?(\s|$)"))
        self.address = self.match.group(1)
        self.url = f"http://{self.address}"


def start_docker_registry(work_dir: str) -> DockerRegistry:
    return DockerRegistry(work_dir)


@contextmanager
def running_docker_registry(work_dir: str) -> Iterator[DockerRegistry]:
    server = start_docker_registry(work_dir)
    try:
        yield server
    finally:
        server.stop()
