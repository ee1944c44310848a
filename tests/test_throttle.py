"""TokenBucket: rate limiting on a Clock."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from kraken.throttle import TokenBucket, Unlimited


def fired(d):
    out = []
    d.addBoth(out.append)
    return out


def test_burst_passes_at_once_then_the_rate_applies():
    clock = Clock()
    bucket = TokenBucket(rate=100, burst=100, clock=clock)
    assert fired(bucket.reserve(100)) == [None]
    late = fired(bucket.reserve(50))
    assert late == []
    clock.advance(0.49)
    assert late == []
    clock.advance(0.01)
    assert late == [None]


def test_a_reservation_bigger_than_the_burst_waits_its_time():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert fired(bucket.reserve(30)) == [None]  # a full bucket lets one big piece start
    nxt = fired(bucket.reserve(5))
    clock.advance(2.9)
    assert nxt == []  # 25 bytes of debt, then 5 more, at 10/s
    clock.advance(0.1)
    assert nxt == [None]


def test_waiters_are_served_in_order():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=10, clock=clock)
    bucket.reserve(10)
    order = []
    bucket.reserve(10).addCallback(lambda _: order.append("big"))
    bucket.reserve(1).addCallback(lambda _: order.append("small"))
    clock.advance(1.0)
    assert order == ["big"]
    clock.advance(0.1)
    assert order == ["big", "small"]


def test_cancel_gives_the_place_up():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=10, clock=clock)
    bucket.reserve(10)
    first = bucket.reserve(10)
    second = fired(bucket.reserve(5))
    first.cancel()
    clock.advance(0.5)
    assert second == [None]
    assert not clock.getDelayedCalls()


def test_close_fails_waiters_and_stops_the_timer():
    clock = Clock()
    bucket = TokenBucket(rate=1, burst=1, clock=clock)
    bucket.reserve(1)
    waiting = fired(bucket.reserve(1))
    bucket.close()
    assert waiting[0].check(CancelledError)
    assert not clock.getDelayedCalls()


@given(st.lists(st.integers(1, 200), min_size=1, max_size=30))
def test_long_run_throughput_never_beats_the_rate(sizes):
    clock = Clock()
    bucket = TokenBucket(rate=100, burst=50, clock=clock)
    done = []
    for n in sizes:
        bucket.reserve(n).addCallback(lambda _, n=n: done.append((clock.seconds(), n)))
    for _ in range(10_000):  # bounded: a limiter bug must fail, not hang
        if not clock.getDelayedCalls():
            break
        clock.advance(min(c.getTime() for c in clock.getDelayedCalls()) - clock.seconds())
    assert len(done) == len(sizes)
    # A reservation is granted only once everything granted before it fits
    # in the burst plus what the rate has let through since the start.
    granted = 0
    for t, n in done:
        assert granted <= 50 + 100 * t + 1e-6
        granted += n


def test_bad_arguments():
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, clock=Clock())
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=1, clock=Clock()).reserve(-1)


def test_unlimited():
    assert fired(Unlimited().reserve(10**12)) == [None]


def test_a_refund_lets_the_next_waiter_through_sooner():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=10, clock=clock)
    assert fired(bucket.reserve(10)) == [None]
    waiting = fired(bucket.reserve(10))
    clock.advance(0.2)
    assert waiting == []
    bucket.refund(10)  # the first reservation's bytes were never sent
    assert waiting == [None]
    bucket.refund(100)  # never above the burst
    assert fired(bucket.reserve(10)) == [None]
    assert fired(bucket.reserve(1)) == []
    bucket.close()
    assert not [c for c in clock.getDelayedCalls() if c.active()]
    with pytest.raises(ValueError):
        bucket.refund(-1)
    Unlimited().refund(5)
