"""UnreachablePolicy: how reports that a peer is unreachable turn into hiding it."""

from __future__ import annotations

import pytest

from kraken.tracker.unreachable import Reports, UnreachablePolicy

HOLD = 60.0


def hidden_at(reports: Reports, *times: float) -> list[bool]:
    return [reports.hidden(t) for t in times]


def test_a_lone_reporter_hides_for_hold_and_cannot_extend_it() -> None:
    policy = UnreachablePolicy(HOLD)
    r = policy.report(None, "10.0.0.1", 100.0)
    assert hidden_at(r, 100.0, 159.9, 160.0) == [True, True, False]
    for t in (110.0, 150.0, 159.0, 200.0, 219.9):  # the same address again and again
        r = policy.report(r, "10.0.0.1", t)
        assert r.until == 160.0, t
    assert not r.hidden(219.9)
    r = policy.report(r, "10.0.0.1", 220.0)  # 2 x hold after its first report: it may hide it again
    assert hidden_at(r, 220.0, 279.9, 280.0) == [True, True, False]


def test_a_lone_reporter_hides_a_peer_at_most_half_the_time() -> None:
    policy = UnreachablePolicy(HOLD)
    r = None
    hidden = 0
    for step in range(0, 3600 * 10, 30):  # a report every 3 s for an hour, checked every 3 s
        now = step / 10
        r = policy.report(r, "10.0.0.66", now)
        hidden += r.hidden(now + 0.05)
    assert hidden / 1200 <= 0.5 + 1 / 1200


def test_two_addresses_keep_it_hidden_while_they_report() -> None:
    policy = UnreachablePolicy(HOLD)
    r = policy.report(None, "10.0.0.1", 100.0)
    r = policy.report(r, "10.0.0.2", 130.0)
    assert r.until == 190.0
    for t in range(150, 1000, 50):  # both keep reporting: hidden all along
        r = policy.report(r, "10.0.0.1" if t % 100 else "10.0.0.2", float(t))
        assert r.until == t + HOLD
    assert r.hidden(1009.0) and not r.hidden(1010.0)


def test_reports_older_than_hold_do_not_count_towards_the_quorum() -> None:
    policy = UnreachablePolicy(HOLD)
    r = policy.report(None, "10.0.0.1", 0.0)
    r = policy.report(r, "10.0.0.2", 60.0)  # the first report is hold old: a lone report, but cooling down
    assert r.until == 60.0 and r.reporters == {"10.0.0.2": 60.0}
    r = policy.report(r, "10.0.0.2", 120.0)  # 2 x hold after the last lone hiding began
    assert r.until == 180.0


def test_quorum_one_lets_any_report_extend() -> None:
    policy = UnreachablePolicy(HOLD, quorum=1)
    r = policy.report(None, "10.0.0.1", 0.0)
    r = policy.report(r, "10.0.0.1", 50.0)
    assert r.until == 110.0


def test_the_reporters_remembered_are_bounded() -> None:
    policy = UnreachablePolicy(HOLD, quorum=3, max_reporters=4)
    r = None
    for n in range(20):
        r = policy.report(r, f"10.0.0.{n}", 1.0)
    assert r is not None and len(r.reporters) == 4 and r.until == 61.0


@pytest.mark.parametrize(
    "kwargs",
    [{"hold": 0.0}, {"hold": -1.0}, {"hold": 1.0, "quorum": 0}, {"hold": 1.0, "quorum": 3, "max_reporters": 2}],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="positive"):
        UnreachablePolicy(**kwargs)  # type: ignore[arg-type]
