"""bench/tracker_cpu.py's ``--metrics both``: the tracker's Site with its metrics and without, measured side by
side in one run (a tiny run, in a child process as the lead runs it: that it runs and gives both sides and
the cost; the figures are the lead's)."""

from __future__ import annotations

import os
import subprocess
import sys

import tracker_cpu

SCRIPT = os.path.abspath(tracker_cpu.__file__)


def test_both_settings_are_measured_in_one_run() -> None:
    argv = [sys.executable, SCRIPT, "--tls", "off", "--metrics", "both", "--reps", "2", "--announces", "20"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["plain, metrics on", "plain, metrics off", "plain"]
    assert "announces/s on one core" in lines[0] and lines[2].startswith("plain: metrics cost ")
