"""``twistd -n kraken-herd --secure``: one command, and the herd speaks TLS everywhere with a generated user.

skopeo pushes through the proxy with the printed credentials and the CA directory the herd made, and pulls from
an agent over TLS; a push without credentials gets 401; the origin refuses plain HTTP and TLS clients without a
cluster certificate.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from processes import OutputReader

from kraken.cli.image import write_layout

from ._tools import check_dir_copy, free_agent_base, free_ports, skopeo

START_TIMEOUT = 120.0  # seconds; backstops
STOP_TIMEOUT = 60.0


@dataclass
class SecureHerd:
    state_dir: str
    proxy: int
    origin: int
    agent_registry: int
    output: OutputReader


@pytest.fixture
def secure_herd(tmp_path: Any, twistd: Any) -> Iterator[SecureHerd]:
    """``twistd -n kraken-herd --secure`` with one agent, on free loopback ports, stopped after the test."""
    ports = free_ports(5)
    proxy, origin, origin_p2p, tracker, index = ports
    agent_base = free_agent_base(1, set(ports))  # not overlapping the five above
    state = str(tmp_path / "state")
    listen = "tcp:{}:interface=127.0.0.1".format
    config = {
        "state_dir": state, "agents": 1, "agent_base_port": agent_base,
        "proxy": {"listen_http": listen(proxy)}, "tracker": {"listen_http": listen(tracker)},
        "build_index": {"listen_http": listen(index)},
        "origin": {"listen_http": listen(origin), "p2p": {"listen": listen(origin_p2p)}},
    }  # fmt: skip
    (tmp_path / "herd.yaml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        twistd.command("kraken-herd", "--secure", "--config", str(tmp_path / "herd.yaml")),
        cwd=twistd.cwd, env=twistd.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output = OutputReader(process.stdout, str(tmp_path / "herd.log"), "kraken-herd ready")
    try:
        output.settled.wait(START_TIMEOUT)
        assert output.ready.is_set(), "\n".join(output.snapshot())
        yield SecureHerd(state, proxy, origin, agent_base, output)
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        output.join(STOP_TIMEOUT)
        assert process.stdout is not None
        process.stdout.close()


def test_one_command_gives_a_herd_with_tls_everywhere_and_a_user(secure_herd: SecureHerd, tmp_path: Any) -> None:
    herd = secure_herd
    secure = os.path.join(herd.state_dir, "secure")
    trust = os.path.join(secure, "trust")
    with open(os.path.join(secure, "credentials")) as f:
        creds = f.read().strip()
    user, password = creds.split(":", 1)
    registry = f"127.0.0.1:{herd.proxy}"
    [said] = [line for line in herd.output.snapshot() if "kraken-herd --secure" in line]
    assert f"user {user}, password {password} in {secure}/credentials" in said and f"--src-cert-dir {trust}" in said

    layout = write_layout(str(tmp_path / "layout"), layers=1, random_layer_size="1MiB", seed=f"sec-{uuid.uuid4()}")
    repo = f"integration/secure-{uuid.uuid4().hex[:8]}"
    skopeo("copy", f"--dest-cert-dir={trust}", f"--dest-creds={creds}", "--preserve-digests",
           f"oci:{layout.path}:v1", f"docker://{registry}/{repo}:v1")  # fmt: skip
    skopeo("copy", f"--src-cert-dir={trust}", f"docker://127.0.0.1:{herd.agent_registry}/{repo}:v1",
           f"dir:{tmp_path / 'pulled'}")  # fmt: skip
    manifest, blobs = check_dir_copy(str(tmp_path / "pulled"))
    assert manifest == layout.read_blob(layout.manifest.digest)
    assert blobs == {layout.config.digest, *(layer.digest for layer in layout.layers)}

    # Without credentials: 401 with a Basic challenge, and skopeo's push fails.
    context = ssl.create_default_context(cafile=os.path.join(trust, "ca.crt"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"https://{registry}/v2/", context=context, timeout=30)
    assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"].startswith("Basic ")
    push = subprocess.run(["skopeo", "copy", f"--dest-cert-dir={trust}", f"oci:{layout.path}:v1",
                           f"docker://{registry}/{repo}:anonymous"], capture_output=True, timeout=300)  # fmt: skip
    assert push.returncode != 0 and b"unauthorized: authentication required" in push.stderr, push.stderr

    # The origin: plain HTTP gets no HTTP answer; TLS without a cluster certificate is refused in the handshake.
    with socket.create_connection(("127.0.0.1", herd.origin), timeout=30) as raw:
        raw.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = raw.recv(100)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        with socket.create_connection(("127.0.0.1", herd.origin), timeout=30) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                tls.recv(100)
