"""UploadExpiry: the periodic sweep of stale uploads, on a Clock."""

import os

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from kraken.store import UploadArea, UploadExpiry
from kraken.workers import InlineWorker


def create(area):
    return Deferred.fromCoroutine(area.create()).result


def started(expire, clock):
    service = UploadExpiry(expire, clock=clock, ttl=3600)  # sweeps every 900 s
    service.startService()
    return service


def test_sweeps_after_the_first_interval_not_at_start(tmp_path):
    clock = Clock()
    area = UploadArea(str(tmp_path), InlineWorker())
    stale = create(area)
    os.utime(area.path(stale), (0, 0))
    clock.advance(10_000)
    service = started(area.expire, clock)
    assert os.path.exists(area.path(stale)), "starting the daemon does no sweep"
    fresh_later = create(area)
    clock.advance(900)
    assert not os.path.exists(area.path(stale))
    assert os.path.exists(area.path(fresh_later)), "an upload touched within the TTL stays"
    service.stopService()
    assert not clock.getDelayedCalls()


def test_failures_are_logged_and_the_timer_keeps_running(tmp_path):
    clock = Clock()
    calls = []

    async def broken(now, ttl):
        calls.append((now, ttl))
        raise OSError("disk gone")

    service = started(broken, clock)
    with capturedLogs() as events:
        clock.advance(900)
        clock.advance(900)
    assert calls == [(900.0, 3600), (1800.0, 3600)]
    failures = [e["log_failure"] for e in events if "log_failure" in e]
    assert len(failures) == 2 and all(f.check(OSError) for f in failures)
    service.stopService()
