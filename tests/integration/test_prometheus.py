"""Debian's ``prometheus`` server scraping the session herd (docs/operations.md §17).

Prometheus (2.42, ``.ci/install``) runs as a child process with a configuration in the test's temporary directory:
every second it scrapes ``/metrics`` of the herd's origin, tracker, build-index, proxy and agent 0's API. The test
pushes an image through the proxy and pulls it from agent 0 with skopeo, then asks Prometheus's HTTP query API
(``/api/v1/query``) until it answers what the pull produced: every target up, agent 0's bytes received from the
origin equal to what its own ``/stats`` says, and the proxy's manifest PUTs counted. Polling is bounded by a
deadline (a backstop); the assertions compare values, never times.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import yaml
from servers import ServerProcess

from kraken.cli.image import write_layout

from ._tools import PLAIN, free_ports, get_json, skopeo

QUERY_DEADLINE = 60.0  # seconds; a backstop, the test ends as soon as Prometheus answers what it waits for
POLL_INTERVAL = 0.2  # seconds between two questions to Prometheus (it scrapes every second)
MANIFEST_PUT = '{job="proxy",route="/v2/<name>/manifests/<reference>",method="PUT",code="2xx"}'


def scrape_config(herd: Any) -> dict[str, Any]:
    """One job per daemon of ``herd``, each scraping its ``/metrics`` (agent 0's on its API port) every second."""
    targets = {
        "origin": herd.origin_url,
        "tracker": herd.tracker_url,
        "build-index": herd.build_index_url,
        "proxy": herd.url,
        "agent": herd.agent_api(0),
    }
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": [url.split("://", 1)[1]]}]}
            for job, url in targets.items()
        ],
    }


@contextmanager
def running_prometheus(config: dict[str, Any], work_dir: Any) -> Iterator[str]:
    """``prometheus`` with ``config`` on a free loopback port, its TSDB under ``work_dir``; yields its URL and
    always stops it."""
    program = shutil.which("prometheus")
    if program is None:
        pytest.fail("prometheus is not installed: run .ci/install")
    config_path = work_dir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    [port] = free_ports(1)
    server = ServerProcess(
        "prometheus",
        [
            program,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={work_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        re.compile(r"Server is ready to receive web requests"),
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def query(prometheus: str, promql: str) -> dict[str, float]:
    """The instant vector ``promql`` evaluates to now: each series' ``job`` label (or its labels) -> its value."""
    answer = get_json(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert answer["status"] == "success", answer
    return {
        sample["metric"].get("job", json.dumps(sample["metric"], sort_keys=True)): float(sample["value"][1])
        for sample in answer["data"]["result"]
    }


def poll(prometheus: str, promql: str, done: Callable[[dict[str, float]], bool]) -> dict[str, float]:
    """Ask ``promql`` until ``done`` holds for the answer (returned), or the deadline passes (the last answer is
    returned, for the assertion to show)."""
    deadline = time.monotonic() + QUERY_DEADLINE
    pause = threading.Event()
    while True:
        found = query(prometheus, promql)
        if done(found) or time.monotonic() > deadline:
            return found
        pause.wait(POLL_INTERVAL)


def test_prometheus_scrapes_the_series_a_pull_produced(herd: Any, tmp_path: Any) -> None:
    layout = write_layout(str(tmp_path / "layout"), layers=1, random_layer_size="1MiB", seed=f"prom-{uuid.uuid4()}")
    repo = f"integration/prometheus-{uuid.uuid4().hex[:8]}"
    prometheus_dir = tmp_path / "prometheus"
    prometheus_dir.mkdir()
    with running_prometheus(scrape_config(herd), prometheus_dir) as prometheus:
        skopeo("copy", *PLAIN.flags("dest"), "--preserve-digests", f"oci:{layout.path}:v1",
               f"docker://{herd.registry}/{repo}:v1")  # fmt: skip
        skopeo("copy", *PLAIN.flags("src"), f"docker://{herd.agent_registry(0)}/{repo}:v1",
               f"dir:{tmp_path / 'pulled'}")  # fmt: skip
        stats = get_json(f"{herd.agent_api(0)}/stats")
        from_origin = stats["bytes_in_from_origins"]
        assert from_origin > 0, stats

        jobs = {"origin", "tracker", "build-index", "proxy", "agent"}
        up = poll(prometheus, "up", lambda found: set(found) == jobs and all(v == 1 for v in found.values()))
        assert up == dict.fromkeys(jobs, 1.0)

        received = 'kraken_p2p_received_bytes_total{job="agent",source="origin"}'
        assert poll(prometheus, received, lambda found: found.get("agent") == from_origin) == {"agent": from_origin}

        puts = poll(prometheus, f"kraken_http_requests_total{MANIFEST_PUT}", lambda found: found.get("proxy", 0) >= 1)
        assert puts.get("proxy", 0) >= 1, puts
