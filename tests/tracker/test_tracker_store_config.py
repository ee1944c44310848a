"""``peer_store`` in the tracker's config: memory by default, redis chosen by config, bad values refused at
start naming file and key; the tap builds the store the config names."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from kraken.tracker.config import TrackerConfig
from kraken.tracker.peers import MemoryPeerStore
from kraken.tracker.redis_peers import LocalCopy, RedisPeerStore, peer_store
from kraken.tracker.store_config import PeerStoreConfig, RedisConfig, SentinelConfig, host_port
from kraken.tracker.tap import Options, tracker_service


def parsed(tmp_path: Path, text: str) -> TrackerConfig:
    """``text`` as tracker.yaml, through the tap's Options (a bad value is a ``UsageError``)."""
    (tmp_path / "tracker.yaml").write_text(text)
    options = Options()
    options.parseOptions(["--config", str(tmp_path / "tracker.yaml")])
    return typing.cast(TrackerConfig, options["parsed"])


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(usage.UsageError) as e:
        parsed(tmp_path, text)
    assert str(tmp_path / "tracker.yaml") in str(e.value)
    return str(e.value)


def test_memory_is_the_default() -> None:
    assert TrackerConfig().peer_store == PeerStoreConfig(kind="memory", redis=None)
    store = peer_store(TrackerConfig(), MemoryReactorClock())
    assert type(store) is MemoryPeerStore


def test_redis_by_address(tmp_path: Path) -> None:
    secret = tmp_path / "redis.pass"
    secret.write_text("s3cret\n")
    config = parsed(
        tmp_path,
        f"peer_store:\n  kind: redis\n  redis:\n    address: 'redis-1:6380'\n    db: 2\n"
        f"    password_file: {secret}\n    key_prefix: 'c1:'\n    timeout: 250ms\n",
    )
    redis = config.peer_store.redis
    assert redis is not None
    assert (redis.address, redis.db, redis.key_prefix, redis.timeout) == ("redis-1:6380", 2, "c1:", 0.25)
    assert (redis.sync_interval, redis.check_interval) == (1.0, 1.0)


def test_redis_through_sentinel(tmp_path: Path) -> None:
    config = parsed(
        tmp_path,
        "peer_store:\n  kind: redis\n  redis:\n    sentinel:\n"
        "      addresses: ['s1:26379', '[::1]:26379']\n      master_name: kraken\n",
    )
    assert config.peer_store.redis == RedisConfig(sentinel=SentinelConfig(("s1:26379", "[::1]:26379"), "kraken"))
    assert host_port("[::1]:26379") == ("::1", 26379)


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("peer_store:\n  kind: etcd\n", "peer_store", "'kind' must be in"),
        ("peer_store:\n  kind: redis\n", "peer_store", "kind: redis needs a redis block"),
        ("peer_store:\n  kind: redis\n  redis: {}\n", "peer_store.redis", "exactly one of redis.address"),
        ("peer_store:\n  redis:\n    address: 'nope'\n", "peer_store.redis", "'nope' is not host:port"),
        ("peer_store:\n  redis:\n    address: 'h:99999'\n", "peer_store.redis", "is not host:port"),
        ("peer_store:\n  redis:\n    address: 'h:1'\n    ttl: 5s\n", "peer_store.redis.ttl", "unknown key"),
        ("peer_store:\n  redis:\n    address: 'h:1'\n    timeout: 0s\n", "peer_store.redis", "timeout"),
        ("peer_store:\n  redis:\n    address: 'h:1'\n    db: -1\n", "peer_store.redis", "'db' must be >= 0"),
        (
            "peer_store:\n  redis:\n    address: 'h:1'\n    password_file: /no/such/file\n",
            "peer_store.redis",
            "password_file '/no/such/file' cannot be read",
        ),
        (
            "peer_store:\n  redis:\n    sentinel:\n      addresses: []\n      master_name: m\n",
            "peer_store.redis.sentinel",
            "at least one host:port",
        ),
        (
            "peer_store:\n  redis:\n    sentinel:\n      addresses: ['s:1']\n",
            "peer_store.redis.sentinel",
            "missing required key 'master_name'",
        ),
    ],
)
def test_bad_values_are_refused_naming_file_and_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    error = refused(tmp_path, text)
    assert f": {key}: " in error
    assert message in error


def test_the_tap_builds_the_redis_store(tmp_path: Path) -> None:
    config = parsed(tmp_path, "peer_store:\n  kind: redis\n  redis:\n    address: '127.0.0.1:1'\n")
    service = tracker_service(config, MemoryReactorClock())
    store = service.getServiceNamed("peer-store")
    assert isinstance(store, RedisPeerStore)
    assert isinstance(store.local, LocalCopy)
    # The connection is lazy: nothing is dialled before the service starts.
    assert store.reachable
