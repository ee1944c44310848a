"""The twistd plugins: one ServiceMaker per file, and ``twistd <name> --help`` works."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.application.service import ServiceMaker

REPO = Path(__file__).resolve().parents[1]
PLUGINS = {
    "kraken-origin": ("kraken_origin.py", "kraken.origin.tap"),
    "kraken-build-index": ("kraken_build_index.py", "kraken.buildindex.tap"),
    "kraken-proxy": ("kraken_proxy.py", "kraken.proxy.tap"),
    "kraken-tracker": ("kraken_tracker.py", "kraken.tracker.tap"),
    "kraken-agent": ("kraken_agent.py", "kraken.agent.tap"),
    "kraken-herd": ("kraken_herd.py", "kraken.herd.tap"),
}


def twistd() -> str:
    beside = Path(sys.executable).with_name("twistd")
    found = str(beside) if beside.exists() else shutil.which("twistd")
    assert found, "twistd is not installed"
    return found


def test_every_plugin_file_is_listed_here() -> None:
    files = sorted(p.name for p in (REPO / "twisted" / "plugins").glob("*.py"))
    assert files == sorted(f for f, _ in PLUGINS.values())
    assert not (REPO / "twisted" / "__init__.py").exists()
    assert not (REPO / "twisted" / "plugins" / "__init__.py").exists()


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_plugin_file_holds_one_service_maker(name: str) -> None:
    filename, tap = PLUGINS[name]
    spec = importlib.util.spec_from_file_location(f"plugin_{filename[:-3]}", REPO / "twisted" / "plugins" / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    makers = [v for v in vars(module).values() if isinstance(v, ServiceMaker)]
    assert [(m.tapname, m.module) for m in makers] == [(name, tap)]
    assert "reactor" not in (REPO / "twisted" / "plugins" / filename).read_text()


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_twistd_help(name: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([twistd(), name, "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout
