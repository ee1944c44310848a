"""The kraken-herd process itself: the twistd plugin, and refusing a bad config before anything listens."""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import pytest

TIMEOUT = 120  # seconds; a backstop


def run(twistd: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        twistd.command(*args),
        cwd=twistd.cwd,
        env=twistd.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_plugin_help(twistd: Any) -> None:
    proc = run(twistd, "kraken-herd", "--help")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--config" in proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "yaml_text, key_path",
    [
        ("nonsense: 1\n", "nonsense"),
        ('proxy: {listen_http: "tcp:PORT:interface=127.0.0.1", bogus_option: 3}\n', "proxy.bogus_option"),
        ("origin:\n  store:\n    no_such_setting: true\n", "origin.store.no_such_setting"),
    ],
    ids=["top-level", "proxy", "nested"],
)
def test_unknown_config_key_is_refused_naming_file_and_key(
    twistd: Any, tmp_path: Any, yaml_text: str, key_path: str
) -> None:
    port = free_port()
    config = tmp_path / "herd-bad.yaml"
    config.write_text(f'state_dir: "{tmp_path / "state"}"\n' + yaml_text.replace("PORT", str(port)))
    proc = run(twistd, "kraken-herd", "--config", str(config))
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert str(config) in output, f"the error does not name the file:\n{output}"
    assert key_path in output, f"the error does not name the key {key_path}:\n{output}"
    assert "Traceback" not in output, output
    assert "kraken-herd ready" not in output
