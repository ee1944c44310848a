"""MetaInfoCache without HTTP: shared fetches, a TTL, absent blobs and failures not remembered, a bound."""

from __future__ import annotations

from typing import Any

from tracker_fakes import NAMESPACE, FakeOrigin
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from kraken.tracker.metainfo import MetaInfoCache


def outcome(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]


def test_one_fetch_for_concurrent_callers_remembered_for_ttl() -> None:
    clock, origin = Clock(), FakeOrigin()
    digest, info = origin.add("a")
    cache = MetaInfoCache(origin, clock=clock, ttl=10, size=5)
    origin.hold = True
    first, second = cache.get(NAMESPACE, digest), cache.get(NAMESPACE, digest)
    origin.hold = False
    origin.release()
    assert outcome(first) == outcome(second) == info and cache.fetches == 1 and len(cache) == 1
    clock.advance(10)
    assert outcome(cache.get(NAMESPACE, digest)) == info and cache.fetches == 2


def test_absent_blobs_and_failures_are_not_remembered_and_nobody_waiting_is_logged() -> None:
    clock, origin = Clock(), FakeOrigin()
    digest, _ = origin.add("b")
    cache = MetaInfoCache(origin, clock=clock, ttl=10, size=5)
    origin.infos.clear()
    assert outcome(cache.get(NAMESPACE, digest)) is None and len(cache) == 0
    origin.error = ValueError("down")
    assert outcome(cache.get(NAMESPACE, digest)).check(ValueError)
    origin.hold = True
    gone = cache.get(NAMESPACE, digest)
    gone.cancel()
    assert outcome(gone).check(CancelledError)
    with capturedLogs() as events:
        origin.release()
    assert [e["log_format"] for e in events] == ["metainfo fetch failed with no one waiting: {error}"]
    assert cache.fetches == 3 and len(cache) == 0


def test_the_cache_is_bounded() -> None:
    clock, origin = Clock(), FakeOrigin()
    cache = MetaInfoCache(origin, clock=clock, ttl=10, size=2)
    for seed in "xyz":
        cache.get(NAMESPACE, origin.add(seed)[0])
    assert len(cache) == 2
