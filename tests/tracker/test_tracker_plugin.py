"""The twistd plugin: ``twistd kraken-tracker --help`` works from a checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def twistd() -> str:
    beside = Path(sys.executable).with_name("twistd")
    found = str(beside) if beside.exists() else shutil.which("twistd")
    assert found, "twistd is not installed"
    return found


def test_twistd_help_lists_the_options() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [twistd(), "kraken-tracker", "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def test_plugin_file_holds_one_service_maker() -> None:
    text = (REPO / "twisted" / "plugins" / "kraken_tracker.py").read_text()
    assert text.count("ServiceMaker(") == 1
    assert '"kraken.tracker.tap"' in text
    assert not (REPO / "twisted" / "__init__.py").exists()
    assert not (REPO / "twisted" / "plugins" / "__init__.py").exists()
