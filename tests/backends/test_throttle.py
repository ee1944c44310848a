"""ThrottledBackend: uploads reserve egress for the file's size, downloads ingress for the stat size."""

from __future__ import annotations

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kraken.backends import BlobInfo, BlobNotFound, IBackend, ListPage, Router, ThrottledBackend
from kraken.throttle import TokenBucket, Unlimited
from kraken.workers import InlineWorker


@implementer(IBackend)
class Recorder:
    """A backend that records calls and finishes at once."""

    def __init__(self, size=0):
        self.calls = []
        self.size = size

    async def stat(self, namespace, name):
        self.calls.append(("stat", name))
        if self.size is None:
            raise BlobNotFound(namespace, name)
        return BlobInfo(self.size)

    async def download(self, namespace, name, path):
        self.calls.append(("download", name))

    async def upload(self, namespace, name, path):
        self.calls.append(("upload", name))

    async def list(self, prefix="", *, continuation=None, limit=1000):
        self.calls.append(("list", prefix))
        return ListPage(())


def start(work):
    """What ``work`` (a coroutine or Deferred) has produced so far: [] while it waits."""
    out = []
    d = work if isinstance(work, Deferred) else Deferred.fromCoroutine(work)
    d.addBoth(out.append)
    return out


def local_file(tmp_path, size):
    path = tmp_path / "f"
    path.write_bytes(b"x" * size)
    return str(path)


def test_provides_ibackend():
    assert verifyObject(
        IBackend, ThrottledBackend(Recorder(), ingress=Unlimited(), egress=Unlimited(), worker=InlineWorker())
    )


def test_an_upload_of_n_bytes_at_rate_r_waits_n_over_r(tmp_path):
    clock = Clock()
    inner = Recorder()
    rate, n = 1000.0, 5000
    backend = ThrottledBackend(
        inner, ingress=Unlimited(), egress=TokenBucket(rate, rate, clock=clock), worker=InlineWorker()
    )
    path = local_file(tmp_path, n)
    assert start(backend.upload("ns", "first", path)) == [None]  # a full bucket lets one transfer start
    second = start(backend.upload("ns", "second", path))
    assert second == [] and inner.calls == [("upload", "first")]
    clock.advance(n / rate - 0.01)
    assert second == []
    clock.advance(0.01)
    assert second == [None]
    assert inner.calls == [("upload", "first"), ("upload", "second")]


def test_a_download_reserves_the_stat_size_from_ingress(tmp_path):
    clock = Clock()
    inner = Recorder(size=3000)
    backend = ThrottledBackend(
        inner,
        ingress=TokenBucket(1000, 1000, clock=clock),
        egress=TokenBucket(1, 1, clock=clock),  # would block any upload: downloads must not use it
        worker=InlineWorker(),
    )
    assert start(backend.download("ns", "a", str(tmp_path / "a"))) == [None]
    second = start(backend.download("ns", "b", str(tmp_path / "b")))
    assert second == []
    clock.advance(2.99)
    assert second == []
    clock.advance(0.01)
    assert second == [None]
    assert inner.calls == [("stat", "a"), ("download", "a"), ("stat", "b"), ("download", "b")]


def test_a_missing_blob_fails_before_reserving(tmp_path):
    clock = Clock()
    ingress = TokenBucket(1, 1, clock=clock)
    backend = ThrottledBackend(Recorder(size=None), ingress=ingress, egress=Unlimited(), worker=InlineWorker())
    (failure,) = start(backend.download("ns", "a", str(tmp_path / "a")))
    assert failure.check(BlobNotFound)
    assert start(ingress.reserve(1)) == [None]  # nothing was taken


def test_stat_and_list_are_not_metered():
    clock = Clock()
    inner = Recorder(size=10**9)
    backend = ThrottledBackend(
        inner, ingress=TokenBucket(1, 1, clock=clock), egress=TokenBucket(1, 1, clock=clock), worker=InlineWorker()
    )
    for _ in range(3):
        assert start(backend.stat("ns", "a")) == [BlobInfo(10**9)]
        assert start(backend.list("p", continuation="c", limit=5)) == [ListPage(())]
    assert clock.getDelayedCalls() == []


def test_unlimited_never_waits(tmp_path):
    backend = ThrottledBackend(Recorder(size=10**12), ingress=Unlimited(), egress=Unlimited(), worker=InlineWorker())
    path = local_file(tmp_path, 10)
    for _ in range(3):
        assert start(backend.upload("ns", "a", path)) == [None]
        assert start(backend.download("ns", "a", str(tmp_path / "d"))) == [None]


def test_close_fails_waiting_transfers(tmp_path):
    clock = Clock()
    backend = ThrottledBackend(
        Recorder(), ingress=Unlimited(), egress=TokenBucket(10, 10, clock=clock), worker=InlineWorker()
    )
    path = local_file(tmp_path, 100)
    start(backend.upload("ns", "a", path))
    waiting = start(backend.upload("ns", "b", path))
    assert waiting == []
    backend.close()
    assert len(waiting) == 1 and waiting[0].check(CancelledError)
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("size", [0, 1])
def test_small_uploads_pass(tmp_path, size):
    clock = Clock()
    backend = ThrottledBackend(
        Recorder(), ingress=Unlimited(), egress=TokenBucket(10, 10, clock=clock), worker=InlineWorker()
    )
    assert start(backend.upload("ns", "a", local_file(tmp_path, size))) == [None]


def test_the_origins_of_a_ring_share_the_limits(tmp_path):
    # 100 B/s for one origin; with four in the ring each gets 25 B/s, and all of it again when alone.
    clock = Clock()
    egress = TokenBucket(100, 100, clock=clock)
    backend = ThrottledBackend(Recorder(), ingress=Unlimited(), egress=egress, worker=InlineWorker())
    router = Router([(".*", backend)])
    path = local_file(tmp_path, 100)

    router.share_bandwidth(4)
    assert (egress.rate, egress.burst) == (25, 25)
    first = start(backend.upload("ns", "a", path))  # a full burst (25 B) is there: it goes, 75 B in debt
    second = start(backend.upload("ns", "b", path))
    assert first == [None] and second == []
    clock.advance(3.9)
    assert second == []  # the debt and a new burst take (75 + 25) / 25 = 4 s (at 100 B/s it would be 1 s)
    clock.advance(0.1)
    assert second == [None]

    router.share_bandwidth(1)
    assert (egress.rate, egress.burst) == (100, 100)
    router.share_bandwidth(0)  # an empty ring (a DNS list not resolved yet) counts as one
    assert egress.rate == 100


def test_a_rate_change_keeps_earned_tokens_up_to_the_new_burst():
    clock = Clock()
    bucket = TokenBucket(10, 10, clock=clock)
    bucket.set_rate(1, 2)
    assert start(bucket.reserve(2)) == [None]  # 2 of the 10 earned tokens remain usable
    waiting = start(bucket.reserve(1))
    clock.advance(0.9)
    assert waiting == []
    clock.advance(0.1)
    assert waiting == [None]
    with pytest.raises(ValueError):
        bucket.set_rate(0, 1)
