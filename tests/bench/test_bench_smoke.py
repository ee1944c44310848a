"""The CI smoke runs of the side-by-side benchmark: loopback mode, 3 hosts, 8 MiB, the three default systems,
then libtorrent alone, so that the harness (our daemons, aria2c and libtorrent with opentracker and mktorrent,
docker-registry behind the capped relay, the tables and the plots) keeps working. Its figures are not checked
against goals: only that they are there and make sense."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import netbench
from report import Report

SCRIPT = os.path.abspath(netbench.__file__)
SIZE = 8 << 20


def test_loopback_smoke_run(tmp_path):
    out, js, plots = tmp_path / "RESULTS.md", tmp_path / "runs.json", tmp_path / "plots"
    argv = [sys.executable, SCRIPT, "--mode", "loopback", "--agents", "3", "--size", "8MiB", "--rate", "64Mbit"]
    argv += ["--work", str(tmp_path / "work"), "--plots", str(plots), "--json", str(js), "--out", str(out)]
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    report = Report.from_json(js.read_text())
    assert report.mode == "loopback"
    assert sorted((r.system, r.n) for r in report.runs) == [("aria2", 3), ("ours", 3), ("registry", 3)]
    runs = {r.system: r for r in report.runs}
    for r in report.runs:
        assert r.size == SIZE and r.rate == 64_000_000
        assert len(r.times) == 3 and all(t > 0 for t in r.times)
        assert r.cpu_seconds is not None and r.cpu_seconds > 0
        assert r.busy is not None and 0 < r.busy <= 1
    # Each host received the whole blob from the registry: exactly three copies left it.
    assert runs["registry"].egress_copies == 3.0
    # The registry's upload is capped: three copies cannot all be done before three ideal times... almost
    # (the relay's burst is 50 ms of traffic).
    assert max(runs["registry"].times) > 2.5 * runs["registry"].ideal
    # Our origin sent at least one copy, and fewer than one per agent plus slack.
    assert 1.0 <= runs["ours"].egress_copies < 3.0
    assert runs["aria2"].egress_copies is not None and runs["aria2"].egress_copies >= 0.5

    text = out.read_text()
    assert "LOOPBACK" in text and "--mode loopback --agents 3" in text
    assert text.count("| Kraken (ours) | 3 |") == 1
    for name in ("netbench-loopback-cdf.png", "netbench-loopback-slowest.png"):
        assert (plots / name).read_bytes()[:4] == b"\x89PNG"
        assert f"]({name})" in text
    assert not (tmp_path / "work" / "seed" / "blob").exists()
    json.loads(js.read_text())  # plain JSON for other tools


def test_loopback_smoke_run_of_libtorrent(tmp_path):
    """libtorrent's swarm (bench/_lt_peer.py under Debian's /usr/bin/python3) the same way: 3 hosts, 8 MiB."""
    js = tmp_path / "runs.json"
    argv = [sys.executable, SCRIPT, "--mode", "loopback", "--agents", "3", "--size", "8MiB", "--rate", "64Mbit"]
    argv += ["--systems", "libtorrent", "--work", str(tmp_path / "work"), "--json", str(js)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    (run,) = Report.from_json(js.read_text()).runs
    assert (run.system, run.n, run.size, run.rate) == ("libtorrent", 3, SIZE, 64_000_000)
    assert len(run.times) == 3 and all(t > 0 for t in run.times)
    assert run.cpu_seconds is not None and run.cpu_seconds > 0
    # The seeder's own payload counter, printed as it stopped: at least most of a copy left it.
    assert run.egress_copies is not None and run.egress_copies >= 0.5
    assert "| BitTorrent (libtorrent) | 3 |" in done.stdout
    assert not (tmp_path / "work" / "seed" / "blob").exists()
