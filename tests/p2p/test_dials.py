"""kraken.p2p.dials: the dial policy, without I/O."""

from __future__ import annotations

import pytest

from kraken.p2p.dials import REPORT_LIMIT, Dials, Outcome


def dials(**overrides: float) -> Dials:
    options = {"max_conns": 10, "max_pending": 20, "hold": 2.0, "busy_backoff": 5.0, "blacklist": 30.0}
    options["blacklist_max"] = 300.0
    options.update(overrides)
    return Dials(**options)  # type: ignore[arg-type]


def test_busy_backs_off_briefly_and_reports_nothing():
    d = dials()
    assert d.failed("p", Outcome.BUSY, 0.0) == (5.0, False)
    assert d.blocked("p", 4.9) and not d.blocked("p", 5.0)
    assert d.strikes("p") == 0 and d.take_reports() == []


def test_a_fault_blacklists_for_the_blacklist_time_without_escalating():
    d = dials()
    for now in (0.0, 100.0, 200.0):
        assert d.failed("p", Outcome.FAULT, now) == (30.0, False)
    assert d.strikes("p") == 0 and d.take_reports() == []


def test_timeouts_are_forgiven_once_then_blacklisted_ever_longer():
    d = dials()
    waits = [d.failed("p", Outcome.LATE, 0.0)[0] for _ in range(7)]
    assert waits == [5.0, 30.0, 60.0, 120.0, 240.0, 300.0, 300.0]
    assert d.take_reports() == ["p"]


def test_refused_dials_are_blacklisted_at_once_and_ever_longer():
    d = dials()
    assert [d.failed("p", Outcome.REFUSED, 0.0)[0] for _ in range(5)] == [30.0, 60.0, 120.0, 240.0, 300.0]


def test_a_handshake_clears_the_strikes():
    d = dials()
    d.failed("p", Outcome.LATE, 0.0)
    d.failed("p", Outcome.LATE, 10.0)
    d.connected("p")
    assert d.strikes("p") == 0
    assert d.failed("p", Outcome.LATE, 50.0) == (5.0, False)  # forgiven again


def test_a_saturated_link_with_one_late_answer_between_successes_never_blacklists():
    d = dials()
    for now in range(0, 100, 10):
        assert d.failed("p", Outcome.LATE, float(now)) == (5.0, False)
        d.connected("p")
    assert d.take_reports() == []


def test_reports_name_each_unreachable_peer_once_newest_kept():
    d = dials()
    d.failed("a", Outcome.REFUSED, 0.0)
    d.failed("b", Outcome.LATE, 0.0)  # forgiven: not reported
    d.failed("c", Outcome.REFUSED, 0.0)
    d.failed("a", Outcome.REFUSED, 1.0)
    assert d.take_reports() == ["c", "a"]
    assert d.take_reports() == []
    for i in range(REPORT_LIMIT + 5):
        d.failed(f"x{i}", Outcome.REFUSED, 0.0)
    reports = d.take_reports()
    assert len(reports) == REPORT_LIMIT and reports[0] == "x5" and reports[-1] == f"x{REPORT_LIMIT + 4}"


def test_a_pending_dial_holds_a_slot_for_the_hold_only():
    d = dials(max_conns=3, max_pending=4)
    assert d.room(conns=1, now=0.0) == 2
    d.started("a", 0.0)
    d.started("b", 0.0)
    assert d.pending("a") and d.pending_count() == 2
    assert d.holding(1.9) == 2 and d.room(conns=1, now=1.9) == 0
    assert d.holding(2.0) == 0 and d.room(conns=1, now=2.0) == 2  # no longer holding: dead dials do not count
    d.started("c", 2.0)
    d.started("d", 2.0)
    assert d.room(conns=0, now=5.0) == 0  # four dials under way: their own bound
    d.failed("a", Outcome.LATE, 5.0)
    d.cancelled("b")
    assert d.room(conns=0, now=5.0) == 2 and not d.pending("a") and not d.pending("b")
    assert d.room(conns=3, now=10.0) == 0


def test_strikes_are_forgotten_once_the_peer_has_been_left_alone_for_blacklist_max():
    d = dials()
    d.failed("p", Outcome.REFUSED, 0.0)
    d.expire(29.0)
    assert d.blocked("p", 29.0) and d.strikes("p") == 1
    d.expire(30.0)
    assert not d.blocked("p", 30.0) and d.strikes("p") == 1
    d.expire(329.0)
    assert d.strikes("p") == 1
    d.expire(330.0)
    assert d.strikes("p") == 0
    assert d.failed("p", Outcome.REFUSED, 400.0) == (30.0, True)


@pytest.mark.parametrize(
    "overrides",
    [{"max_conns": 0}, {"max_pending": 0}, {"hold": 0.0}, {"blacklist": 0.0}, {"blacklist_max": 10.0}],
)
def test_bad_parameters(overrides):
    with pytest.raises(ValueError):
        dials(**overrides)
