"""HealthFilter on a Clock: fails/passes thresholds, timeouts, the one-member rule."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cluster_fakes import FakeCheck
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from kraken.cluster.config import ClusterConfig, HealthConfig
from kraken.cluster.health import HealthFilter
from kraken.cluster.ring import Ring
from kraken.config import Duration
from kraken.core import Digest

A, B, C = "a:15002", "b:15002", "c:15002"


def idle(clock: Clock) -> bool:
    return not [c for c in clock.getDelayedCalls() if c.active()]


class Fixture:
    def __init__(self, members: list[str] | None = None, **kwargs: Any) -> None:
        self.clock = Clock()
        self.check = FakeCheck()
        self.members = [A, B, C] if members is None else members
        self.health = HealthFilter(
            self.check,
            clock=self.clock,
            members=lambda: self.members,
            **{"fails": 3, "passes": 2, "interval": 10.0, "timeout": 3.0, **kwargs},
        )
        self.changes: list[tuple[str, bool]] = []
        self.health.on_change(lambda m, ok: self.changes.append((m, ok)))

    def start(self) -> None:
        self.health.startService()  # the first round runs at once

    def rounds(self, n: int) -> None:
        for _ in range(n):
            self.clock.advance(10.0)

    def stop(self) -> list[Any]:
        out: list[Any] = []
        self.health.stopService().addBoth(out.append)
        return out


@pytest.fixture
def fx() -> Iterator[Fixture]:
    f = Fixture()
    yield f
    if f.health.running:
        assert f.stop() == [None]
    assert idle(f.clock), "no timers left behind"


def test_checks_every_member_at_start_and_every_interval(fx: Fixture) -> None:
    fx.start()
    assert sorted(fx.check.calls) == [A, B, C]
    fx.clock.advance(9.9)
    assert len(fx.check.calls) == 3
    fx.clock.advance(0.1)
    assert len(fx.check.calls) == 6
    assert all(fx.health.healthy(m) for m in (A, B, C))
    assert fx.health.checks == 6 and fx.health.failures == 0


def test_unhealthy_after_fails_consecutive_failures(fx: Fixture) -> None:
    fx.check.answers[B] = False
    fx.start()  # failure 1
    fx.rounds(1)  # failure 2
    assert fx.health.healthy(B) and fx.changes == []
    with capturedLogs() as events:
        fx.rounds(1)  # failure 3
    assert not fx.health.healthy(B)
    assert fx.health.healthy(A) and fx.health.healthy(C)
    assert fx.health.unhealthy() == [B]
    assert fx.changes == [(B, False)]
    [warned] = [e for e in events if "unhealthy" in e.get("log_format", "")]
    assert warned["member"] == B and warned["error"] == "answered unhealthy"


def test_a_pass_resets_the_failure_count(fx: Fixture) -> None:
    fx.check.answers[B] = False
    fx.start()
    fx.rounds(1)
    fx.check.answers[B] = True
    fx.rounds(1)
    fx.check.answers[B] = False
    fx.rounds(2)
    assert fx.health.healthy(B)
    fx.rounds(1)
    assert not fx.health.healthy(B)


def test_healthy_again_after_passes_consecutive_passes(fx: Fixture) -> None:
    fx.check.answers[B] = False
    fx.start()
    fx.rounds(2)
    assert not fx.health.healthy(B)
    fx.check.answers[B] = True
    fx.rounds(1)  # pass 1
    assert not fx.health.healthy(B)
    fx.check.answers[B] = False
    fx.rounds(1)  # a failure resets the passes
    fx.check.answers[B] = True
    fx.rounds(1)
    assert not fx.health.healthy(B)
    fx.rounds(1)  # pass 2 in a row
    assert fx.health.healthy(B)
    assert fx.changes == [(B, False), (B, True)]
    # and it takes fails failures again to go down
    fx.check.answers[B] = False
    fx.rounds(2)
    assert fx.health.healthy(B)
    fx.rounds(1)
    assert not fx.health.healthy(B)


def test_a_check_that_raises_fails(fx: Fixture) -> None:
    fx.check.answers[C] = ConnectionRefusedError("refused")
    fx.start()
    fx.rounds(2)
    assert not fx.health.healthy(C)
    assert fx.health.failures == 3


def test_a_check_that_never_answers_fails_after_the_timeout(fx: Fixture) -> None:
    fx.check.answers[A] = FakeCheck.HANG
    fx.start()
    fx.clock.advance(2.9)
    assert fx.health.failures == 0
    fx.clock.advance(0.1)  # 3 s: timed out and cancelled
    assert fx.check.cancelled == [A]
    assert fx.health.failures == 1
    fx.clock.advance(7.0)  # t=10: the next round is on time
    assert fx.check.calls.count(A) == 2
    fx.clock.advance(3.0)
    fx.clock.advance(7.0)
    fx.clock.advance(3.0)
    assert not fx.health.healthy(A)
    assert fx.check.cancelled == [A, A, A]
    assert fx.changes == [(A, False)]


def test_stopping_mid_round_ends_the_checks_and_changes_nothing(fx: Fixture) -> None:
    fx.check.answers[A] = FakeCheck.HANG
    fx.start()
    assert fx.stop() == [None]
    assert fx.check.cancelled == [A]
    assert fx.health.failures == 0 and fx.health.healthy(A)
    assert idle(fx.clock)


def test_a_one_member_cluster_is_always_healthy_and_not_checked() -> None:
    fx = Fixture(members=[A])
    fx.check.answers[A] = False
    fx.start()
    fx.rounds(5)
    assert fx.check.calls == []
    assert fx.health.healthy(A) and fx.health.unhealthy() == []
    assert fx.stop() == [None]


def test_a_cluster_shrinking_to_one_member_makes_it_healthy() -> None:
    fx = Fixture(members=[A, B])
    fx.check.answers[A] = False
    fx.start()
    fx.rounds(2)
    assert not fx.health.healthy(A)
    fx.members = [A]
    assert fx.health.healthy(A), "at once, not only at the next round"
    fx.rounds(1)
    fx.members = [A, B]
    assert fx.health.healthy(A), "it starts afresh when the cluster grows again"
    assert fx.stop() == [None]


def test_new_members_start_healthy_and_leavers_are_forgotten(fx: Fixture) -> None:
    fx.check.answers[C] = False
    fx.start()
    fx.rounds(2)
    assert not fx.health.healthy(C)
    fx.members = [A, B, "d:15002"]
    assert fx.health.healthy("d:15002")
    fx.rounds(1)
    assert fx.health.unhealthy() == []
    fx.members = [A, B, C]
    assert fx.health.healthy(C)
    fx.rounds(2)
    assert fx.health.healthy(C)  # two failures since it came back
    fx.rounds(1)
    assert not fx.health.healthy(C)


def test_a_failing_listener_is_logged_and_checks_go_on(fx: Fixture) -> None:
    def broken(member: str, healthy: bool) -> None:
        raise RuntimeError("boom")

    fx.health.on_change(broken)
    fx.check.answers[B] = False
    with capturedLogs() as events:
        fx.start()
        fx.rounds(2)
    assert fx.changes == [(B, False)]
    assert any("listener failed" in e.get("log_format", "") for e in events)
    fx.rounds(1)
    assert fx.check.calls.count(B) == 4


def test_a_round_that_raises_is_logged_and_the_timer_keeps_going(fx: Fixture) -> None:
    calls = 0

    def members() -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("no members today")
        return [A, B]

    fx.health._members = members
    with capturedLogs() as events:
        fx.start()
    assert any("round failed" in e.get("log_format", "") for e in events)
    fx.rounds(1)
    assert sorted(fx.check.calls) == [A, B]


def test_placement_skips_members_the_filter_marks_unhealthy(fx: Fixture) -> None:
    ring = Ring([A, B, C], replicas=2)
    digest = Digest.from_bytes(b"layer")
    first, second, third = ring.owners(digest)
    fx.check.answers[first] = False
    fx.start()
    fx.rounds(2)
    assert ring.locations(digest, fx.health.healthy) == [second]
    fx.check.answers[second] = False
    fx.rounds(3)
    assert ring.locations(digest, fx.health.healthy) == [third]


@pytest.mark.parametrize("bad", [{"fails": 0}, {"passes": 0}, {"interval": 0.0}, {"timeout": -1.0}])
def test_bad_arguments(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="positive"):
        HealthFilter(FakeCheck(), clock=Clock(), members=lambda: [A], **bad)


def test_from_config() -> None:
    config = ClusterConfig(
        hosts=(A, B), refresh_interval=Duration(30.0), health=HealthConfig(fails=5, passes=4, timeout=Duration(1.0))
    )
    clock = Clock()
    check = FakeCheck()
    check.answers[A] = FakeCheck.HANG
    health = HealthFilter.from_config(config, check, clock=clock, members=lambda: [A, B])
    assert health.step == 30.0
    health.startService()
    clock.advance(1.0)
    assert check.cancelled == [A]
    for _ in range(3):
        clock.advance(29.0)
        clock.advance(1.0)
    assert health.healthy(A)  # 4 failures of 5
    clock.advance(29.0)
    clock.advance(1.0)
    assert not health.healthy(A)
    health.stopService()
    assert idle(clock)
