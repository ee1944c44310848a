"""kraken.p2p.slots: admission and eviction, without I/O."""

from __future__ import annotations

import pytest

from kraken.p2p.slots import Admission, Slots, far_behind

T = "torrent"


def slots(**overrides: object) -> Slots[str]:
    options: dict[str, object] = {
        "max_conns": 3, "per_address": 2, "per_address_total": 3, "grace": 5.0, "idle_after": 30.0,
        "exempt": ("127.0.0.1",),
    }  # fmt: skip
    options.update(overrides)
    return Slots(**options)  # type: ignore[arg-type]


def test_admits_below_capacity_and_refuses_at_it_while_every_holder_is_young_or_useful():
    s = slots()
    for i, conn in enumerate("abc"):
        assert s.admit(T, None, 0.0).admit
        s.opened(conn, T, None, float(i))
    refused = s.admit(T, None, 4.0)
    assert (refused.admit, refused.reason, refused.evict, refused.limited) == (False, "at capacity", None, False)
    for conn in "abc":
        s.progress(conn, 10.0)
    assert not s.admit(T, None, 39.0).admit  # each moved a piece 29 s ago
    assert s.admit(T, None, 40.0).evict == "a"  # then the one useful longest ago (a tie: opened first)


def test_a_newcomer_evicts_the_most_useless_holder_past_its_grace():
    s = slots()
    s.opened("useful", T, None, 0.0)
    s.opened("never", T, None, 1.0)
    s.opened("older", T, None, 0.5)
    s.progress("useful", 2.0)
    assert not s.admit(T, None, 5.4).admit  # "older" is 4.9 s old
    admission = s.admit(T, None, 5.5)
    assert (admission.admit, admission.evict, admission.reason) == (True, "older", "a newcomer needs the slot")
    assert s.admit(T, None, 5.5, busy={"older"}).admit is False  # busy (waiting for a piece): kept
    assert s.admit(T, None, 6.0, busy={"older"}).evict == "never"


def test_pending_dials_take_slots():
    s = slots()
    s.opened("a", T, None, 0.0)
    assert s.admit(T, None, 0.0, pending=1).admit
    assert not s.admit(T, None, 0.0, pending=2).admit
    assert not s.admit(T, None, 100.0, pending=3).admit  # overfull: evicting one would not make room


def test_per_address_limits_count_per_torrent_and_over_all():
    s = slots()
    s.opened("a", T, "10.0.0.9", 0.0)
    s.opened("b", T, "10.0.0.9", 0.0)
    refused = s.admit(T, "10.0.0.9", 0.0)
    assert (refused.admit, refused.limited) == (False, True)
    assert refused.reason == "2 connections from 10.0.0.9 for this blob already"
    assert s.admit(T, "10.0.0.8", 0.0).admit
    s.opened("c", "other", "10.0.0.9", 0.0)
    assert s.admit("third", "10.0.0.9", 0.0).reason == "3 connections from 10.0.0.9 already"
    assert s.from_address("10.0.0.9") == 3 and s.from_address("10.0.0.9", T) == 2
    s.closed("a")
    s.closed("a")  # twice: ignored
    assert s.admit(T, "10.0.0.9", 0.0).admit
    assert s.from_address("10.0.0.9") == 2


def test_exempt_addresses_are_not_counted():
    s = slots(max_conns=10)
    for i in range(6):
        assert s.admit(T, "127.0.0.1", 0.0).admit
        s.opened(f"c{i}", T, "127.0.0.1", 0.0)
    assert s.from_address("127.0.0.1") == 0 and s.count(T) == 6


def test_idle_holders_of_a_complete_torrent_are_evicted():
    s = slots(max_conns=10)
    s.opened("quiet", T, None, 0.0)
    s.opened("served", T, None, 0.0)
    s.opened("waiting", T, None, 0.0)
    s.progress("served", 20.0)
    assert s.idle(T, 29.9, complete=True) == []
    assert s.idle(T, 30.0, complete=True, busy={"waiting"}) == ["quiet"]
    assert s.idle(T, 50.0, complete=True) == ["quiet", "waiting", "served"]


def test_idle_holders_of_a_download_are_evicted_only_when_it_is_full():
    s = slots()
    s.opened("a", T, None, 0.0)
    s.opened("b", T, None, 0.0)
    assert s.idle(T, 100.0, complete=False) == []
    assert s.idle(T, 100.0, complete=False, pending=1) == ["a", "b"]
    s.opened("c", T, None, 90.0)
    assert s.idle(T, 100.0, complete=False) == ["a", "b"]


def test_a_connection_is_opened_once():
    s = slots()
    s.opened("a", T, None, 0.0)
    with pytest.raises(ValueError):
        s.opened("a", T, None, 0.0)
    s.progress("unknown", 1.0)  # ignored


@pytest.mark.parametrize("overrides", [{"max_conns": 0}, {"per_address": 0}, {"grace": -1.0}, {"idle_after": 0.0}])
def test_bad_parameters(overrides):
    with pytest.raises(ValueError):
        slots(**overrides)


def test_peers_far_behind_get_the_catch_up_slots_past_capacity_and_no_more():
    s = slots(catch_up=2)
    for i, conn in enumerate("abc"):
        s.opened(conn, T, None, float(i))
        s.progress(conn, 3.0)
    assert not s.admit(T, None, 4.0).admit
    assert s.admit(T, None, 4.0, behind=True) == Admission(True, "a peer far behind")
    s.opened("d", T, None, 4.0)
    assert s.admit(T, None, 4.0, behind=True).admit
    s.opened("e", T, None, 4.0)
    assert s.admit(T, None, 4.0, behind=True).reason == "at capacity"


def test_catch_up_is_off_at_zero():
    s = slots(catch_up=0)
    for i, conn in enumerate("abc"):
        s.opened(conn, T, None, float(i))
        s.progress(conn, 3.0)
    assert not s.admit(T, None, 4.0, behind=True).admit


@pytest.mark.parametrize(
    ("have", "theirs", "pieces", "behind"),
    [
        (0, 0, 64, False),  # a swarm's start: nobody is behind
        (15, 0, 64, False),  # this side has less than a quarter
        (16, 0, 64, True),
        (16, 7, 64, True),
        (16, 8, 64, False),  # half as much is not far behind
        (64, 31, 64, True),  # a seeder and a peer under half way
        (64, 32, 64, False),
    ],
)
def test_far_behind(have: int, theirs: int, pieces: int, behind: bool) -> None:
    assert far_behind(have, theirs, pieces) is behind


def test_a_useless_holder_makes_way_for_anyone_while_catch_up_connections_are_open():
    s = slots(catch_up=1)
    for i, conn in enumerate("abc"):
        s.opened(conn, T, None, float(i))
    s.opened("late", T, None, 3.0)  # a peer far behind, past capacity
    for conn in "bc":
        s.progress(conn, 10.0)
    s.progress("late", 10.0)
    assert s.admit(T, None, 10.0).evict == "a"  # never useful, past its grace
