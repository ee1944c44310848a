"""ClusterConfig: defaults, YAML, validation with file and key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kraken import config as kconfig
from kraken.cluster.config import ClusterConfig, HealthConfig
from kraken.config import Duration


def build(tmp_path: Path, text: str) -> ClusterConfig:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return kconfig.build(ClusterConfig, kconfig.load(str(path)))


def test_defaults() -> None:
    cfg = ClusterConfig(hosts=("origin-1:15002",))
    assert cfg.dns is None
    assert cfg.replicas == 3
    assert cfg.refresh_interval == 10.0
    assert cfg.health == HealthConfig(fails=3, passes=2, timeout=Duration(3.0))


def test_a_list_of_hosts_becomes_a_tuple() -> None:
    cfg = ClusterConfig(hosts=["a:1", "b:2"])  # a list from code is taken too
    assert cfg.hosts == ("a:1", "b:2")


def test_yaml_with_hosts(tmp_path: Path) -> None:
    cfg = build(
        tmp_path,
        """
hosts: ["origin-1:15002", "origin-2:15002", "[fd00::3]:15002"]
replicas: 2
refresh_interval: 30s
health: {fails: 5, timeout: 500ms}
""",
    )
    assert cfg.hosts == ("origin-1:15002", "origin-2:15002", "[fd00::3]:15002")
    assert cfg.replicas == 2
    assert cfg.refresh_interval == 30.0
    assert cfg.health == HealthConfig(fails=5, passes=2, timeout=Duration(0.5))


def test_yaml_with_dns(tmp_path: Path) -> None:
    cfg = build(tmp_path, 'dns: "origins.kraken.internal:15002"\n')
    assert cfg.dns == "origins.kraken.internal:15002"
    assert cfg.hosts is None


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("{}", "", "exactly one of hosts"),
        ('hosts: ["a:1"]\ndns: "n:1"', "", "exactly one of hosts"),
        ("hosts: []", "", "must not be empty"),
        ('hosts: "a:1"', "hosts", "must be a list"),
        ('hosts: ["a:1", "b"]', "", "host:port"),
        ('hosts: ["a:1", "a:1"]', "", "twice"),
        ('dns: "origins"', "", "host:port"),
        ('dns: "origins:99999"', "", "host:port"),
        ('hosts: ["a:1"]\nreplicas: 0', "", "replicas must be positive"),
        ('hosts: ["a:1"]\nreplicas: two', "replicas", "integer"),
        ('hosts: ["a:1"]\nrefresh_interval: 0s', "", "refresh_interval must be positive"),
        ('hosts: ["a:1"]\nrefresh_interval: soon', "refresh_interval", "not a duration"),
        ('hosts: ["a:1"]\nhealth: {fails: 0}', "health", "fails must be positive"),
        ('hosts: ["a:1"]\nhealth: {passes: -1}', "health", "passes must be positive"),
        ('hosts: ["a:1"]\nhealth: {timeout: 0}', "health", "timeout must be positive"),
        ('hosts: ["a:1"]\nhealth: {interval: 5s}', "health.interval", "unknown key"),
        ('hosts: ["a:1"]\nstatic: ["a:1"]', "static", "unknown key"),
    ],
)
def test_invalid(tmp_path: Path, text: str, key: str, message: str) -> None:
    with pytest.raises(kconfig.ConfigError, match=message) as info:
        build(tmp_path, text)
    assert str(info.value).startswith(str(tmp_path / "cluster.yaml"))
    if key:
        assert info.value.key == tuple(key.split("."))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"hosts": ("a:1",), "dns": "n:1"},
        {"hosts": ()},
        {"hosts": ("a:1",), "replicas": -1},
        {"hosts": ("a:1",), "refresh_interval": 0.0},
    ],
)
def test_invalid_in_code(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ClusterConfig(**kwargs)
