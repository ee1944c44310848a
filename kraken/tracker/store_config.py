"""Which peer store a tracker uses (YAML key ``peer_store``), and how it reaches Redis.

``kind: memory`` (the default) keeps peers in the tracker's memory, as
before. ``kind: redis`` shares them with every tracker pointed at the same
Redis (``kraken.tracker.redis_peers``), reached directly (``address``) or
through Redis Sentinel (``sentinel``), exactly one of the two.
"""

from __future__ import annotations

import os

import attrs

from kraken.config import Duration, positive
from kraken.core.address import split_host_port


def _check_address(instance: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None:
        host_port(value)


def host_port(address: str) -> tuple[str, int]:
    """``"redis-1:6379"`` -> ``("redis-1", 6379)``; ``"[::1]:6379"`` -> ``("::1", 6379)``."""
    try:
        return split_host_port(address)
    except ValueError as e:
        raise ValueError(f"{address!r} is not host:port: {e}") from None


def _check_readable(instance: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and not os.access(value, os.R_OK):
        raise ValueError(f"password_file {value!r} cannot be read")


def _check_addresses(instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("sentinel.addresses must list at least one host:port")
    for address in value:
        host_port(address)


@attrs.frozen
class SentinelConfig:
    # The Sentinels to ask (host:port each); any one that answers names the primary.
    addresses: tuple[str, ...] = attrs.field(validator=_check_addresses)
    # The name the Sentinels monitor the primary under ("sentinel monitor <name> ...").
    master_name: str = attrs.field(validator=attrs.validators.min_len(1))


@attrs.frozen
class RedisConfig:
    # host:port of the Redis server (or use sentinel).
    address: str | None = attrs.field(default=None, validator=_check_address)
    sentinel: SentinelConfig | None = None
    db: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    # A file holding the Redis password (AUTH), read at start; absent: no AUTH.
    password_file: str | None = attrs.field(default=None, validator=_check_readable)
    # Prepended to every key, so several clusters can share one Redis.
    key_prefix: str = "kraken:tracker:"
    # A Redis call slower than this counts as Redis unreachable.
    timeout: Duration = attrs.field(default=Duration(1.0), validator=positive)
    # How often a blob's peers are read back from Redis (peers announced to
    # other trackers show up within this); in between, answers come from memory.
    sync_interval: Duration = attrs.field(default=Duration(1.0), validator=positive)
    # How often Redis is checked (its run id): one found restarted or failed over gets this
    # tracker's peers written back; an unreachable one is tried again this often.
    check_interval: Duration = attrs.field(default=Duration(1.0), validator=positive)

    def __attrs_post_init__(self) -> None:
        if (self.address is None) == (self.sentinel is None):
            raise ValueError("give exactly one of redis.address and redis.sentinel")


@attrs.frozen
class PeerStoreConfig:
    # memory: peers in this tracker's memory; redis: shared by every tracker using the same Redis.
    kind: str = attrs.field(default="memory", validator=attrs.validators.in_(("memory", "redis")))
    redis: RedisConfig | None = None

    def __attrs_post_init__(self) -> None:
        if self.kind == "redis" and self.redis is None:
            raise ValueError("kind: redis needs a redis block (address or sentinel)")
