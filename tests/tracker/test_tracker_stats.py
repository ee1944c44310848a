"""``GET /stats`` of the tracker (kraken.tracker.stats): the peer store's kind, its Redis counters and what it
holds, in front of the tracker's own resource, which still answers everything else."""

from __future__ import annotations

import json
import random
from typing import Any

from tracker_fakes import App, announce_doc, peer
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from kraken.config import Duration
from kraken.tracker.redis_peers import READ, LocalCopy, RedisPeerStore
from kraken.tracker.stats import with_stats
from kraken.tracker.store_config import RedisConfig


class Redis:
    """A Redis that answers (``up``: READ with ``rows``) or refuses every call."""

    def __init__(self) -> None:
        self.up = True
        self.rows: list[Any] = []

    def eval(self, script: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        if not self.up:
            return fail(ConnectionError("Connection refused"))
        return succeed(self.rows if script == READ else 1)

    def run_id(self) -> Deferred[str]:
        return succeed("run-1") if self.up else fail(ConnectionError("Connection refused"))

    def disconnect(self) -> Deferred[Any]:
        return succeed(None)


def stats_app(store: Any = None) -> App:
    app = App(store=store)
    app.stub = StubTreq(with_stats(app.http.resource(), app.store))
    return app


def redis_app() -> tuple[App, Redis, RedisPeerStore, Clock]:
    """An app over a Redis store whose checks run on a clock of their own (the second of the tuple's clocks)."""
    redis, checks = Redis(), Clock()
    options = RedisConfig(address="redis.test:6379", check_interval=Duration(5.0))
    local = LocalCopy(30.0, checks, rng=random.Random(1))
    store = RedisPeerStore(lambda: redis, local, clock=checks, ttl=30.0, max_peers=1000, options=options)
    store.startService()
    return stats_app(store), redis, store, checks


def test_the_memory_store_counts_blobs_and_peers() -> None:
    app = stats_app()
    assert app.json("GET", "/stats") == (
        200, {"peer_store": {"kind": "memory", "reachable": True, "outages": 0, "bad_entries": 0, "blobs": 0,
                             "peers": 0}},
    )  # fmt: skip
    for n, info_hash in ((1, "ab" * 32), (2, "ab" * 32), (3, "cd" * 32)):
        assert app.announce(announce_doc(peer(n), info_hash))[0] == 200
    code, doc = app.json("GET", "/stats")
    assert code == 200
    assert (doc["peer_store"]["blobs"], doc["peer_store"]["peers"]) == (2, 3)


def test_the_redis_store_shows_its_outages_and_bad_entries() -> None:
    app, redis, store, checks = redis_app()
    redis.rows = ["not json", "99.0", json.dumps({"p": peer(9).to_json(), "s": "10.0.0.9"}), "1100.0"]
    assert app.announce(announce_doc(peer(1)))[0] == 200  # reads the blob's peers back: one entry is garbage
    redis.up = False
    checks.advance(5.0)  # the check fails: an outage
    assert app.announce(announce_doc(peer(2)))[0] == 200  # answered from memory
    code, doc = app.json("GET", "/stats")
    assert code == 200
    assert doc == {"peer_store": {"kind": "redis", "reachable": False, "outages": 1, "bad_entries": 1, "blobs": 1,
                                  "peers": 3}}  # fmt: skip
    redis.up = True
    checks.advance(5.0)
    assert app.json("GET", "/stats")[1]["peer_store"]["reachable"] is True
    store.stopService()


def test_other_routes_go_to_the_tracker_and_other_methods_are_refused() -> None:
    app = stats_app()
    assert app.request("GET", "/health") == (200, b"OK\n")
    assert app.json("GET", "/stats/more")[0] == 404  # only exactly /stats
    code, doc = app.json("POST", "/stats", data=b"{}")
    assert (code, doc) == (405, {"error": "method not allowed: use GET"})
    assert app.announce(announce_doc(peer(1)))[0] == 200
