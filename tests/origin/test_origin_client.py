"""ClusterClient without I/O: its locations (one lookup in flight, remembered, abandoned), failover and peers.

The failover itself is tested in tests/cluster/test_cluster_failover.py and against real origins in
test_origin_cluster_reactor.py; here each member is a fake single-origin client.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock

from kraken.core import Digest
from kraken.core.peer import PeerInfo
from kraken.net import HTTPClientConfig, HTTPStatusError
from kraken.origin.client import ClusterClient, StillFetching
from kraken.workers import InlineWorker

DIGEST = Digest.from_bytes(b"blob")
NS = "library/alpine"


class Member:
    """A fake OriginClient: ``locations`` answers ``ring`` (or waits, with ``hold``), ``stat`` raises ``error``."""

    def __init__(self, name: str, ring: list[str]) -> None:
        self.name = name
        self.ring = ring
        self.hold: list[Deferred[None]] | None = None
        self.error: Exception | None = None
        self.asked = 0

    async def locations(self, digest: Digest) -> list[str]:
        self.asked += 1
        if self.hold is not None:
            gate: Deferred[None] = Deferred()
            self.hold.append(gate)
            await gate
        return self.ring

    async def stat(self, namespace: str, digest: Digest) -> int | None:
        if self.error is not None:
            raise self.error
        return len(self.name)

    async def peers(self, digest: Digest) -> list[PeerInfo]:
        if self.error is not None:
            raise self.error
        return [PeerInfo(hashlib.sha1(self.name.encode()).hexdigest(), "10.0.0.1", 15001)]


class Cluster(ClusterClient):
    def __init__(self, clock: Clock, members: dict[str, Member], **kwargs: Any) -> None:
        super().__init__(
            http=None,  # type: ignore[arg-type]  # client() is ours
            origins=["http://seed"],
            clock=clock,
            config=HTTPClientConfig(retries=1, backoff=1),
            worker=InlineWorker(),
            rng=random.Random(1),
            **kwargs,
        )
        self.members = members

    def client(self, base: str) -> Any:
        return self.members[base]


def cluster(clock: Clock, **kwargs: Any) -> Cluster:
    ring = ["o1:1", "o2:2"]
    members = {base: Member(base, ring) for base in ("http://seed", "http://o1:1", "http://o2:2")}
    return Cluster(clock, members, **kwargs)


def outcome(d: Any) -> Any:
    """What a coroutine or Deferred that has finished gave (a Failure if it failed)."""
    if not isinstance(d, Deferred):
        d = Deferred.fromCoroutine(d)
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]


def test_locations_are_asked_once_for_concurrent_callers_and_remembered_for_the_ttl() -> None:
    clock = Clock()
    c = cluster(clock, locations_ttl=10)
    seed = c.members["http://seed"]
    seed.hold = []
    first, second = (Deferred.fromCoroutine(c.locations(DIGEST)) for _ in range(2))
    assert seed.asked == 1
    seed.hold[0].callback(None)
    seed.hold = None
    assert first.result == second.result == ("http://o1:1", "http://o2:2")
    clock.advance(9)
    outcome(c.locations(DIGEST))
    assert seed.asked == 1
    clock.advance(1)
    outcome(c.locations(DIGEST))
    assert seed.asked == 2


def test_a_lookup_nobody_waits_for_any_more_is_cancelled() -> None:
    c = cluster(Clock())
    seed = c.members["http://seed"]
    seed.hold = []
    d = Deferred.fromCoroutine(c.locations(DIGEST))
    d.cancel()
    assert outcome(d).check(CancelledError) and seed.hold[0].called


def test_remembered_locations_need_no_lookup() -> None:
    c = cluster(Clock())
    c.remember_locations(DIGEST, ("http://o2:2",))
    assert outcome(c.stat(NS, DIGEST)) == len("http://o2:2") and c.members["http://seed"].asked == 0


def test_a_failing_location_is_left_for_the_next_and_still_fetching_is_final() -> None:
    clock = Clock()
    c = cluster(clock)
    c.members["http://o1:1"].error = ConnectionRefusedError()
    assert outcome(c.stat(NS, DIGEST)) == len("http://o2:2") and c.failovers == 1
    assert c.members["http://seed"].asked == 1
    outcome(c.stat(NS, DIGEST))
    assert c.members["http://seed"].asked == 2  # the failure made it ask again
    c.members["http://o1:1"].error = StillFetching("HEAD", "u", 202)
    assert outcome(c.stat(NS, DIGEST)).check(StillFetching) and c.failovers == 2
    assert c.failed_rounds == 0 and not clock.getDelayedCalls()


def test_peers_of_every_location_and_the_last_error_if_all_fail() -> None:
    c = cluster(Clock())
    assert len(outcome(c.peers(DIGEST))) == 2
    for member in c.members.values():
        member.error = HTTPStatusError("GET", "u", 503)
    assert outcome(c.peers(DIGEST)).value.code == 503
    outcome(c.locations(DIGEST))
    assert c.members["http://seed"].asked == 2  # forgotten after all failed


def test_any_member_is_a_ring_member_asked_anew_each_time() -> None:
    c = cluster(Clock())
    seed = c.members["http://seed"]
    assert outcome(c.any_member()) == "http://o1:1"  # what the seed says, not the seed itself (a load balancer)
    outcome(c.any_member())
    assert seed.asked == 2, "random keys are not remembered"
    seed.ring = []
    assert outcome(c.any_member()).check(OSError)
