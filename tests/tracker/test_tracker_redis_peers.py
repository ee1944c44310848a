"""RedisPeerStore's logic on a Clock, against a scripted stand-in for the Redis connection: what it sends per
announce, merging what it reads back, and an outage (answers from memory, one log line each way, no Redis call
per announce while down, the local copy written back). The scripts themselves run against a real redis-server
in tests/integration/test_tracker_redis.py."""

from __future__ import annotations

import json
import random
from typing import Any

from tracker_fakes import peer, result_of
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from zope.interface.verify import verifyObject

from kraken.config import Duration
from kraken.tracker.peers import IPeerStore
from kraken.tracker.redis_peers import READ, WRITE, LocalCopy, RedisPeerStore
from kraken.tracker.store_config import RedisConfig

H1 = "11" * 32
A, B = "10.0.0.1", "10.0.0.2"
TTL = 30.0


class ScriptedRedis:
    """Answers ``eval``/``ping`` as ``mode`` says: ``up`` (READ answers ``rows``), ``hang`` or ``fail``."""

    def __init__(self) -> None:
        self.mode = "up"
        self.calls: list[tuple[str, list[str], list[Any]]] = []
        self.rows: list[Any] = []
        self.run = "run-1"
        self.disconnected = False

    def _answer(self, value: Any) -> Deferred[Any]:
        if self.mode == "hang":
            return Deferred()
        if self.mode == "fail":
            return fail(ConnectionError("Not connected"))
        return succeed(value)

    def eval(self, script: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        self.calls.append(("WRITE" if script == WRITE else "READ" if script == READ else "?", keys, args))
        return self._answer(self.rows if script == READ else 1)

    def run_id(self) -> Deferred[str]:
        self.calls.append(("RUNID", [], []))
        return self._answer(self.run)

    def sent(self, what: str) -> list[tuple[str, list[str], list[Any]]]:
        return [c for c in self.calls if c[0] == what]

    def disconnect(self) -> Deferred[Any]:
        self.disconnected = True
        return succeed(None)


def make() -> tuple[RedisPeerStore, ScriptedRedis, Clock]:
    clock = Clock()
    redis = ScriptedRedis()
    local = LocalCopy(TTL, clock, rng=random.Random(1))
    options = RedisConfig(address="redis.test:6379", key_prefix="k:", check_interval=Duration(5.0))
    store = RedisPeerStore(lambda: redis, local, clock=clock, ttl=TTL, max_peers=1000, options=options)
    store.startService()
    return store, redis, clock


def entry(n: int, source: str, expires: float, *, complete: bool = False) -> list[Any]:
    doc = {"p": peer(n, complete=complete).to_json(), "s": source}
    return [json.dumps(doc, separators=(",", ":")), str(expires)]


def test_provides_the_interface() -> None:
    store, _, _ = make()
    assert verifyObject(IPeerStore, store)
    result_of(store.stopService())


def test_an_announce_is_one_write_and_a_read_at_most_every_sync_interval() -> None:
    store, redis, _ = make()
    result_of(store.update(H1, peer(1), 10.0, A))
    assert redis.calls[1:] == [
        ("WRITE", ["k:peers:" + H1, "k:exp:" + H1], [30, 1000, peer(1).peer_id, repr(40.0), entry(1, A, 0)[0]])
    ]
    assert result_of(store.peers(H1, 10, 10.0)) == [peer(1)]
    result_of(store.peers(H1, 10, 10.5))  # within sync_interval: from memory
    result_of(store.peers(H1, 10, 11.0))
    assert [c[0] for c in redis.calls] == ["RUNID", "WRITE", "READ", "READ"]
    assert redis.calls[2][2] == [repr(10.0), 1000]
    result_of(store.stopService())
    assert redis.disconnected


def test_a_seeders_announce_is_answered_once_redis_holds_it() -> None:
    store, redis, _ = make()
    redis.mode = "hang"
    leecher = Deferred.fromCoroutine(store.update(H1, peer(1), 10.0, A))
    assert leecher.called  # a downloading peer's write is not waited for
    slow = Deferred[Any]()
    redis.eval = lambda script, keys, args: slow  # type: ignore[method-assign]
    seeder = Deferred.fromCoroutine(store.update(H1, peer(2, complete=True), 10.0, A))
    assert not seeder.called
    slow.callback(1)
    assert seeder.called
    redis.mode = "up"
    result_of(store.stopService())


def test_peers_read_back_are_merged_where_newer() -> None:
    store, redis, _ = make()
    store.local.record(H1, peer(1, complete=True), 12.0, A)  # newer here than in Redis
    redis.rows = [*entry(1, A, 5.0 + TTL), *entry(2, B, 8.0 + TTL), "not json", "1", *entry(3, B, 11.0 + TTL)]
    answer = result_of(store.peers(H1, 10, 12.0))
    assert sorted(p.peer_id for p in answer) == sorted(peer(n).peer_id for n in (1, 2, 3))
    assert peer(1, complete=True) in answer  # the newer local entry won
    assert store.local.last_seen(H1, peer(2).peer_id) == 8.0
    assert store.bad_entries == 1
    # Read back entries expire on the tracker's clock like its own.
    redis.rows = []
    later = result_of(store.peers(H1, 10, 8.0 + TTL + 0.5))
    assert sorted(p.peer_id for p in later) == sorted(peer(n).peer_id for n in (1, 3))
    result_of(store.stopService())


def test_an_outage_answers_from_memory_and_logs_once_each_way() -> None:
    store, redis, clock = make()
    redis.mode = "hang"
    with capturedLogs() as events:
        result_of(store.update(H1, peer(1), 0.0, A))  # the write hangs
        clock.advance(1.0)  # ... and times out: Redis is down
        assert not store.reachable and store.outages == 1
        calls = len(redis.calls)
        for n in range(2, 50):
            result_of(store.update(H1, peer(n), 1.0, B))
            assert len(result_of(store.peers(H1, 100, 1.0))) == n
        assert len(redis.calls) == calls  # no Redis call per announce while down
        clock.advance(4.0)  # t=5: a check, hanging
        clock.advance(1.0)  # ... times out
        redis.mode = "up"
        clock.advance(4.0)  # t=10: the next check: back, and the local copy is written back
    texts = [e["log_format"] for e in events if "redis" in e["log_format"]]
    assert sum("redis unreachable" in t for t in texts) == 1
    assert sum("redis back" in t for t in texts) == 1
    assert store.reachable and store.outages == 1
    assert len(redis.calls) == calls + 3
    (writes,) = [c for c in redis.calls[calls:] if c[0] == "WRITE"]
    assert len(writes[2]) == 2 + 3 * 49  # one round trip per blob, with every live peer
    result_of(store.update(H1, peer(1), 12.0, A))
    assert redis.calls[-1][0] == "WRITE"  # announces reach Redis again
    result_of(store.stopService())


def test_a_restarted_redis_gets_the_peers_written_back() -> None:
    store, redis, clock = make()
    result_of(store.update(H1, peer(1, complete=True), 0.0, A))  # a seeder: it announces once
    clock.advance(5.0)
    assert len(redis.sent("WRITE")) == 1
    redis.run = "run-2"  # restarted empty (or failed over) between two checks
    with capturedLogs() as events:
        clock.advance(5.0)
    (restarted,) = [e for e in events if "redis restarted or failed over" in e["log_format"]]
    assert restarted["count"] == 1
    assert redis.sent("WRITE")[-1][2][2] == peer(1).peer_id
    assert store.reachable and store.outages == 0
    result_of(store.stopService())


def test_a_failing_read_still_answers_from_memory() -> None:
    store, redis, clock = make()
    result_of(store.update(H1, peer(1), 0.0, A))
    redis.mode = "fail"
    with capturedLogs() as events:
        assert result_of(store.peers(H1, 10, 0.0)) == [peer(1)]
        assert result_of(store.peers(H1, 10, 5.0)) == [peer(1)]
    assert [e["log_format"] for e in events if "redis" in e["log_format"]] != []
    assert store.outages == 1
    result_of(store.stopService())
    assert clock.getDelayedCalls() == []  # the retry is cancelled on stop
