"""The tracker's peer store in a real redis-server (Debian's): the Lua scripts and the key layout of
``kraken.tracker.redis_peers`` through txredisapi, with announce times from a Clock (Redis keeps what the
trackers' clocks say), and Redis's own key expiry awaited through the reactor. Two tracker processes
sharing one Redis are in test_tracker_redis_processes.py."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from redis_server import RedisServer, running_redis
from twisted.internet.task import Clock, deferLater

from kraken.core.peer import PeerInfo
from kraken.tracker.redis_peers import LocalCopy, RedisPeerStore, connect
from kraken.tracker.store_config import RedisConfig

H1 = "11" * 32
A, B = "10.0.0.1", "10.0.0.2"


def peer(n: int, complete: bool = False) -> PeerInfo:
    return PeerInfo(f"{n:040x}", f"10.0.0.{n}", 16001, complete=complete)


@pytest.fixture
def redis(tmp_path: Any) -> Iterator[RedisServer]:
    with running_redis(str(tmp_path / "redis")) as server:
        yield server


@pytest_twisted.async_yield_fixture()
async def tracker(redis: RedisServer, reactor: Any) -> Any:
    """``tracker(ttl, max_peers=1000)``: a started store as one tracker has it, on its own Clock (its
    timeouts never fire unless advanced), over a real connection to ``redis``; all stopped at the end."""
    started: list[RedisPeerStore] = []

    def start(ttl: float, max_peers: int = 1000) -> RedisPeerStore:
        clock = Clock()
        config = RedisConfig(address=redis.address, key_prefix="t:")
        local = LocalCopy(ttl, clock, rng=random.Random(1))
        store = RedisPeerStore(
            lambda: connect(config), local, clock=clock, ttl=ttl, max_peers=max_peers, options=config
        )
        store.startService()
        started.append(store)
        return store

    yield start
    for store in started:
        await store.stopService()


async def raw(server: RedisServer, *command: Any) -> Any:
    conn = connect(RedisConfig(address=server.address))
    try:
        return await conn._handler.execute_command(*command)
    finally:
        await conn.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_peer_announced_to_one_tracker_is_handed_out_by_another(redis: RedisServer, tracker: Any) -> None:
    one, two = tracker(30.0), tracker(30.0)
    await one.update(H1, peer(1), 100.0, A)
    await one.update(H1, peer(2, complete=True), 110.0, B)
    assert {p.peer_id for p in await one.peers(H1, 10, 110.0)} == {peer(1).peer_id, peer(2).peer_id}
    # one's writes are in Redis once its read (sent after them on the same connection) is answered
    assert set(await two.peers(H1, 10, 111.0)) == {peer(1), peer(2, complete=True)}
    assert await raw(redis, "ZCARD", "t:exp:" + H1) == 2
    assert await raw(redis, "TTL", "t:peers:" + H1) in (29, 30)
    # peer 1 expires at 130 by the trackers' clocks: a third tracker never sees it, and Redis drops it
    assert await tracker(30.0).peers(H1, 10, 130.5) == [peer(2, complete=True)]
    assert await raw(redis, "HKEYS", "t:peers:" + H1) == [peer(2).peer_id]


@pytest_twisted.ensureDeferred
async def test_an_older_entry_never_replaces_a_newer_one(redis: RedisServer, tracker: Any) -> None:
    one, two = tracker(30.0), tracker(30.0)
    await two.update(H1, peer(1, complete=True), 120.0, B)
    await two.peers(H1, 10, 120.0)
    await one.update(H1, peer(1), 100.0, A)  # an older announce arriving late (a write-back after an outage)
    await one.peers(H1, 10, 100.0)
    fresh = tracker(30.0)
    assert await fresh.peers(H1, 10, 121.0) == [peer(1, complete=True)]
    assert fresh.local.last_seen(H1, peer(1).peer_id) == 120.0


@pytest_twisted.ensureDeferred
async def test_a_blob_holds_at_most_max_peers_in_redis(redis: RedisServer, tracker: Any) -> None:
    one = tracker(30.0, max_peers=5)
    for n in range(1, 11):
        await one.update(H1, peer(n), float(n), A)
    await one.peers(H1, 10, 10.0)
    members = await raw(redis, "ZRANGE", "t:exp:" + H1, 0, -1)
    assert members == [peer(n).peer_id for n in range(6, 11)]  # the least recently seen went
    assert sorted(await raw(redis, "HKEYS", "t:peers:" + H1)) == members


@pytest_twisted.ensureDeferred
async def test_redis_expires_the_keys_of_a_blob_nobody_announces(
    redis: RedisServer, tracker: Any, reactor: Any
) -> None:
    one = tracker(1.0)
    await one.update(H1, peer(1), 0.0, A)
    await one.peers(H1, 10, 0.0)
    keys = ("t:peers:" + H1, "t:exp:" + H1)
    assert await raw(redis, "EXISTS", *keys) == 2
    for _ in range(100):  # Redis's own expiry (1 s): polled through the reactor, at most 10 s
        if await raw(redis, "EXISTS", *keys) == 0:
            break
        await deferLater(reactor, 0.1, lambda: None)
    assert await raw(redis, "EXISTS", *keys) == 0
