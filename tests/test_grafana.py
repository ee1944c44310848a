"""docs/grafana/kraken.json: every metric its PromQL expressions name is served by our daemons, and every
expression is valid PromQL (Debian's promtool checks them, as alerting rules, with Grafana's variables
filled in)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock

from kraken import config
from kraken.agent.config import AgentConfig
from kraken.agent.tap import agent_service
from kraken.buildindex.config import BuildIndexConfig
from kraken.buildindex.tap import build_index_service
from kraken.net import metrics
from kraken.origin.config import OriginConfig
from kraken.origin.tap import origin_service
from kraken.proxy.config import ProxyConfig
from kraken.proxy.tap import proxy_service
from kraken.tracker.config import TrackerConfig
from kraken.tracker.tap import tracker_service

DASHBOARD = Path(__file__).parent.parent / "docs" / "grafana" / "kraken.json"
TAPS = ("origin", "agent", "tracker", "buildindex", "proxy")
METRIC = re.compile(r"\bkraken_[a-z0-9_]+")


def expressions(dashboard: dict[str, Any]) -> Iterator[str]:
    """Every PromQL expression: the panels' targets and the template variables' queries."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            yield query["query"]


def served_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The sample names every daemon's registry can give, each daemon built with every part that has series
    (backends, cleanup, a build-index cluster and a remote); read from the collectors' descriptions."""
    registries: list[CollectorRegistry] = []

    def recorded() -> CollectorRegistry:
        registry = metrics.new_registry()
        registries.append(registry)
        return registry

    for tap in TAPS:
        monkeypatch.setattr(f"kraken.{tap}.tap.new_registry", recorded)
    fs = [{"namespace": ".*", "fs": {"root": str(tmp_path / "backend"), "name_path": "identity"}}]
    reactor = MemoryReactorClock()
    origin = {"store": {"root": str(tmp_path / "origin")}, "backends": fs, "cleanup": {"enabled": True}}
    origin_service(build(OriginConfig, origin), reactor)
    agent_service(build(AgentConfig, {"store": {"root": str(tmp_path / "agent")}}), reactor)
    tracker_service(TrackerConfig(), reactor)
    remote = {"name": "dc2", "repositories": ".*", "build_index": "http://bi:1", "origins": "http://o:1"}
    index = {"database": str(tmp_path / "tags.db"), "backends": fs, "remotes": [remote],
             "cluster": {"nodes": ["http://127.0.0.1:15004", "http://bi-2:15004"]}}  # fmt: skip
    build_index_service(build(BuildIndexConfig, index), reactor)
    proxy_service(build(ProxyConfig, {"uploads": {"root": str(tmp_path / "uploads")}}), reactor)
    assert len(registries) == len(TAPS)
    # A registry built with auto_describe knows the sample names of every collector registered on it.
    return {name for registry in registries for name in registry._names_to_collectors}


def build(cls: Any, doc: dict[str, Any]) -> Any:
    return config.build(cls, config.from_mapping(doc, "test.yaml"))


def test_every_metric_the_dashboard_uses_is_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(expressions(dashboard))
    assert exprs and all(METRIC.search(e) for e in exprs), "an expression names none of our metrics"
    used = {name for e in exprs for name in METRIC.findall(e)}
    served = served_names(tmp_path, monkeypatch)
    assert used - served == set()
    # The dashboard's sections each have their series (a renamed metric would drop silently out of it).
    for name in ("kraken_p2p_download_duration_seconds_bucket", "kraken_tracker_handout_size_bucket",
                 "kraken_http_request_duration_seconds_bucket", "kraken_store_cleanup_evicted_blobs_total",
                 "kraken_buildindex_writeback_lag_seconds", "kraken_origin_writeback_lag_seconds"):  # fmt: skip
        assert name in used and name in served


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    filled = [
        e.replace("$__rate_interval", "5m").replace("$instance", ".*")
        for e in expressions(dashboard)
        if not e.startswith("label_values(")  # Grafana's own function, not PromQL
    ]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"alert": f"Expr{i}", "expr": e} for i, e in enumerate(filled)
    ]}]}  # fmt: skip
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
