"""The JSON log format (``twistd --logger kraken.logs.json``) of a real ``twistd -n kraken-origin``: every line
of its output is one JSON object with the event's named fields; without the option, the text format is as it
was."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from processes import OutputReader
from servers import ServerProcess

from ._tools import free_ports

NAMESPACE = "logs/json"
TIMEOUT = 60.0


@contextmanager
def origin(twistd: Any, tmp_path: Path, *logger: str) -> Iterator[tuple[int, OutputReader]]:
    """``twistd -n [--logger ...] kraken-origin`` on free ports, stopped (SIGTERM) after the block."""
    http_port, p2p_port = free_ports(2)
    config = {
        "listen_http": f"tcp:{http_port}:interface=127.0.0.1",
        "store": {"root": str(tmp_path / "store")},
        "p2p": {"listen": f"tcp:{p2p_port}:interface=127.0.0.1"},
    }
    (tmp_path / "origin.yaml").write_text(yaml.safe_dump(config))
    argv = twistd.command(*logger, "kraken-origin", "--config", str(tmp_path / "origin.yaml"))
    server = ServerProcess("origin", argv, re.compile("origin listening on"), env=twistd.env)
    try:
        yield http_port, server.output
    finally:
        server.stop()


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        assert 200 <= response.status < 300, (method, path, response.status, data)
        return response.getheader("Location") or ""
    finally:
        conn.close()


def upload(port: int, data: bytes) -> str:
    """The origin's upload protocol: start, PATCH the bytes, commit; returns the digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    base = f"/namespace/{NAMESPACE}/blobs/{digest}/uploads"
    uid = request(port, "POST", base)
    request(port, "PATCH", f"{base}/{uid}", data, {"Content-Range": f"0-{len(data)}"})
    request(port, "PUT", f"{base}/{uid}")
    return digest


def test_json_lines_carry_the_events_named_fields(twistd: Any, tmp_path: Path) -> None:
    with origin(twistd, tmp_path, "--logger", "kraken.logs.json") as (port, output):
        digest = upload(port, b"a blob logged as JSON")
        assert output.wait_for(lambda line: digest in line and "committed" in line, timeout=TIMEOUT)
        lines = output.snapshot()
    docs = [json.loads(line) for line in lines]  # every line, the twistd banner included
    assert all(list(doc)[:4] == ["time", "level", "logger", "text"] for doc in docs)
    [committed] = [d for d in docs if d.get("digest") == digest and "committed" in d["text"]]
    assert committed["level"] == "info"
    assert committed["namespace"] == NAMESPACE  # the event's field, not the logger's namespace
    assert committed["logger"].startswith("kraken.origin")
    assert committed["bytes"] == len(b"a blob logged as JSON") and committed["text"].startswith(f"blob {digest}")
    [listening] = [d for d in docs if d["text"].startswith("origin listening on")]
    assert listening["component"] == "origin" and listening["address"] == f"127.0.0.1:{port}"


def test_without_the_option_the_text_format_is_unchanged(twistd: Any, tmp_path: Path) -> None:
    with origin(twistd, tmp_path) as (port, output):
        digest = upload(port, b"a blob logged as text")
        assert output.wait_for(lambda line: digest in line and "committed" in line, timeout=TIMEOUT)
        lines = output.snapshot()
    [committed] = [line for line in lines if f"blob {digest} committed" in line]
    assert committed.split(" [", 1)[1].startswith("kraken.origin")  # "<time> [<namespace>#info] <text>"
    assert "#info] blob " in committed
    assert not any(line.startswith("{") for line in lines)
