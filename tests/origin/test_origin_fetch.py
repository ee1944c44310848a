"""BlobFetcher: fetch on miss over a fake backend, on the harness's store and Clock."""

from __future__ import annotations

import os
from typing import Any

import pytest
from fetch_fakes import FakeBackend
from origin_harness import Origin
from results import result_of
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs

from kraken.backends import BackendUnavailable, BlobNotFound, Router
from kraken.core import Digest, MetaInfo
from kraken.origin.fetch import BlobFetcher

NS = "library/ubuntu"
DATA = b"a layer from the backend " * 7
DIGEST = Digest.from_bytes(DATA)


@pytest.fixture
def backend() -> FakeBackend:
    b = FakeBackend()
    b.blobs[DIGEST.hex] = DATA
    return b


@pytest.fixture
def fetcher(origin: Origin, backend: FakeBackend) -> BlobFetcher:
    return BlobFetcher(
        origin.store, Router([("library/.*", backend)]), worker=origin.worker, clock=origin.clock, error_ttl=15.0
    )


def ensure(fetcher: BlobFetcher, digest: Digest = DIGEST, ns: str = NS) -> bool:
    return bool(result_of(fetcher.ensure(ns, digest)))


def leftovers(origin: Origin) -> list[str]:
    """Files in the upload area and the commit staging area (nothing may stay there)."""
    return os.listdir(os.path.join(origin.root, "uploads")) + os.listdir(os.path.join(origin.root, "tmp"))


def test_a_held_blob_is_present_without_asking_the_backend(
    origin: Origin, fetcher: BlobFetcher, backend: FakeBackend
) -> None:
    assert ensure(fetcher)  # fetched (the inline worker and fake backend finish at once)
    assert backend.stats == 1
    assert ensure(fetcher)
    assert backend.stats == 1 and backend.downloads == 1


def test_one_fetch_however_many_ask(origin: Origin, fetcher: BlobFetcher, backend: FakeBackend) -> None:
    backend.gate = Deferred()
    assert [ensure(fetcher) for _ in range(5)] == [False] * 5
    assert fetcher.fetching(DIGEST)
    assert (backend.stats, backend.downloads) == (1, 1)
    assert result_of(origin.store.stat(DIGEST)) is None  # nothing visible while it downloads
    idle = fetcher.when_idle(DIGEST)
    backend.gate.callback(None)
    result_of(idle)
    assert not fetcher.fetching(DIGEST)
    assert ensure(fetcher)
    assert (backend.stats, backend.downloads) == (1, 1)
    with open(origin.store.blob_path(DIGEST), "rb") as f:
        assert f.read() == DATA
    info = result_of(origin.store.metainfo(DIGEST))
    assert isinstance(info, MetaInfo) and info.digest == DIGEST and info.length == len(DATA)
    assert leftovers(origin) == []


def test_not_found_is_cached_for_error_ttl_then_asked_again(
    origin: Origin, fetcher: BlobFetcher, backend: FakeBackend
) -> None:
    other = Digest.from_bytes(b"not in the backend")
    with pytest.raises(BlobNotFound):
        ensure(fetcher, other)
    origin.clock.advance(14.0)
    with pytest.raises(BlobNotFound):
        ensure(fetcher, other)
    assert backend.stats == 1  # the cached answer
    backend.blobs[other.hex] = b"not in the backend"
    origin.clock.advance(1.0)
    assert ensure(fetcher, other)  # asked again, and now the backend has it
    assert backend.stats == 2


def test_a_namespace_without_backend_is_not_found(fetcher: BlobFetcher, backend: FakeBackend) -> None:
    with pytest.raises(BlobNotFound):
        ensure(fetcher, ns="scratch/tmp")
    assert backend.stats == 0


def test_an_unavailable_backend_is_retried_after_a_while(
    origin: Origin, fetcher: BlobFetcher, backend: FakeBackend
) -> None:
    backend.down = True
    with capturedLogs() as events:
        with pytest.raises(BackendUnavailable):
            ensure(fetcher)
    assert any(e.get("digest") == str(DIGEST) and "failed" in e["log_format"] for e in events)
    with pytest.raises(BackendUnavailable):
        ensure(fetcher)
    assert backend.stats == 1
    backend.down = False
    origin.clock.advance(5.0)
    assert ensure(fetcher)
    assert backend.stats == 2


def test_a_download_failing_midway_leaves_nothing(origin: Origin, fetcher: BlobFetcher, backend: FakeBackend) -> None:
    backend.gate = Deferred()
    assert not ensure(fetcher)
    backend.down = True
    backend.gate.callback(None)
    assert not fetcher.fetching(DIGEST)
    with pytest.raises(BackendUnavailable):
        ensure(fetcher)
    assert result_of(origin.store.stat(DIGEST)) is None
    assert leftovers(origin) == []


@pytest.mark.parametrize("lie", [False, True], ids=["same-size", "other-size"])
def test_a_wrong_blob_is_never_visible(origin: Origin, fetcher: BlobFetcher, backend: FakeBackend, lie: bool) -> None:
    backend.blobs[DIGEST.hex] = b"X" * len(DATA)  # the backend holds other bytes under this digest
    if lie:
        backend.lie_size = len(DATA) + 1
    with capturedLogs() as events:
        assert not ensure(fetcher)  # the backend said it has it; the fetch then finds it wrong
    assert [e for e in events if "wrong blob" in e["log_format"] and e["digest"] == str(DIGEST)]
    assert result_of(origin.store.stat(DIGEST)) is None
    assert leftovers(origin) == []
    with pytest.raises(BlobNotFound):  # treated as not found, and cached as such
        ensure(fetcher)
    assert backend.stats == 1


def test_stopping_cancels_fetches_in_flight(origin: Origin, fetcher: BlobFetcher, backend: FakeBackend) -> None:
    fetcher.startService()
    backend.gate = Deferred()
    assert not ensure(fetcher)
    out: list[Any] = []
    fetcher.stopService().addBoth(out.append)
    assert out == [None]
    assert not fetcher.fetching(DIGEST)
    assert result_of(origin.store.stat(DIGEST)) is None
    assert leftovers(origin) == []
    assert backend.gate.called  # the awaited download was cancelled


def test_the_p2p_hook_says_whether_a_peer_should_come_back(
    origin: Origin, fetcher: BlobFetcher, backend: FakeBackend
) -> None:
    backend.gate = Deferred()
    assert result_of(fetcher.fetching_for_peer(NS, DIGEST)) is True  # started: the peer hears BUSY
    assert backend.downloads == 1
    idle = fetcher.when_idle(DIGEST)
    backend.gate.callback(None)
    result_of(idle)
    assert result_of(fetcher.fetching_for_peer(NS, DIGEST)) is False  # here now: the scheduler serves it
    assert result_of(fetcher.fetching_for_peer(NS, Digest.from_bytes(b"nowhere"))) is False  # unknown
    assert result_of(fetcher.fetching_for_peer("scratch/tmp", Digest.from_bytes(b"x"))) is False  # no backend


def holding(origin: Origin, backend: FakeBackend, hold: float) -> BlobFetcher:
    return BlobFetcher(
        origin.store, Router([("library/.*", backend)]), worker=origin.worker, clock=origin.clock, hold=hold
    )


def test_with_a_hold_a_question_is_answered_when_the_fetch_lands(origin: Origin, backend: FakeBackend) -> None:
    fetcher = holding(origin, backend, hold=2.0)
    backend.gate = Deferred()
    asked = Deferred.fromCoroutine(fetcher.ensure(NS, DIGEST))
    again = Deferred.fromCoroutine(fetcher.ensure(NS, DIGEST))  # a second client, while the first fetch runs
    origin.clock.advance(1.9)
    assert not asked.called and not again.called
    backend.gate.callback(None)
    assert (result_of(asked), result_of(again)) == (True, True)  # the blob landed within the hold: no 202
    assert backend.downloads == 1 and origin.clock.getDelayedCalls() == []


def test_with_a_hold_a_long_fetch_is_still_pending_after_it(origin: Origin, backend: FakeBackend) -> None:
    fetcher = holding(origin, backend, hold=2.0)
    backend.gate = Deferred()
    asked = Deferred.fromCoroutine(fetcher.ensure(NS, DIGEST))
    origin.clock.advance(2.0)
    assert result_of(asked) is False  # 202: ask again
    assert fetcher._flights[DIGEST]._done_waiters == []  # the held question's wait is forgotten with it
    assert fetcher.fetching(DIGEST) and origin.clock.getDelayedCalls() == []
    backend.gate.callback(None)
    assert ensure(fetcher)


def test_with_a_hold_a_fetch_failing_meanwhile_raises_its_error(origin: Origin, backend: FakeBackend) -> None:
    fetcher = holding(origin, backend, hold=2.0)
    backend.gate = Deferred()
    asked = Deferred.fromCoroutine(fetcher.ensure(NS, DIGEST))
    backend.gate.errback(BackendUnavailable("the backend went away"))
    with pytest.raises(BackendUnavailable):
        result_of(asked)
