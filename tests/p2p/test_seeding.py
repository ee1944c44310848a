"""Seeding: the pure seeding policy (the outbox's order, super-seeding), without I/O, like test_dispatch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kraken.p2p.seeding import Ask, Ledger, Seeding

WINDOW = 4.0


def always(conn: str) -> bool:
    return True


def take(policy: Seeding[str], holders: dict[int, int] | None = None, writable: set[str] | None = None):
    return policy.next(
        alive=always,
        writable=always if writable is None else writable.__contains__,
        holders=lambda ask: (holders or {}).get(ask.index, 0),
    )


def test_the_piece_fewest_peers_have_goes_first_then_the_least_sent_then_the_oldest() -> None:
    policy: Seeding[str] = Seeding(super_seed=False, whole_copy_first=False)
    ledger = Ledger(4, window=WINDOW)
    for index in (0, 1, 2, 3):
        policy.ask(ledger, "a", "a", index)
    ledger.sent(2, "x")
    holders = {0: 2, 1: 1, 2: 0, 3: 0}
    assert [take(policy, holders).index for _ in range(4)] == [3, 2, 1, 0]
    assert take(policy) is None and not policy


def test_only_writable_connections_are_served_and_closed_ones_are_dropped() -> None:
    policy: Seeding[str] = Seeding(super_seed=False, whole_copy_first=False)
    ledger = Ledger(2, window=WINDOW)
    policy.ask(ledger, "a", "a", 0)
    policy.ask(ledger, "b", "b", 1)
    assert take(policy, writable=set()) is None
    assert len(policy.waiting()) == 2  # still waiting for room
    ask = policy.next(alive=lambda c: c == "b", writable=always, holders=lambda a: 0)
    assert ask is not None and (ask.conn, ask.index) == ("b", 1)
    assert not policy  # a's request went with its connection


def test_cancel_and_drop() -> None:
    policy: Seeding[str] = Seeding(super_seed=False, whole_copy_first=False)
    ledger = Ledger(3, window=WINDOW)
    for conn, index in (("a", 0), ("a", 1), ("b", 0), ("b", 2)):
        policy.ask(ledger, conn, conn, index)
    policy.cancel("a", 0)
    assert [(a.conn, a.index) for a in policy.waiting()] == [("a", 1), ("b", 0), ("b", 2)]
    policy.drop("b")
    assert [(a.conn, a.index) for a in policy.waiting()] == [("a", 1)]


def test_the_ledger_counts_copies_and_names_the_first_whole_copy_once() -> None:
    ledger = Ledger(2, window=WINDOW)
    assert ledger.sent(0, "a")[1] is False
    assert ledger.sent(0, "b")[1] is False
    assert ledger.sent(1, "a")[1] is True  # every piece sent once now
    assert ledger.sent(1, "b")[1] is False
    assert (ledger.copies(0), ledger.copies(1)) == (2, 2) and ledger.every_piece_sent()


def test_a_piece_is_timed_from_when_it_left_the_write_buffer() -> None:
    ledger = Ledger(1, window=WINDOW)
    first, _ = ledger.sent(0, "a")
    assert ledger.last(0) == (float("inf"), "a")  # on its way
    second, _ = ledger.sent(0, "b")
    ledger.left(0, first, 10.0)  # the first copy's drain is old news
    assert ledger.last(0) == (float("inf"), "b")
    ledger.left(0, second, 12.0)
    assert ledger.last(0) == (12.0, "b")


def declines(policy: Seeding[str], ledger: Ledger, peer: str, now: float, **kw: object) -> bool:
    options: dict = {"complete": True, "connected": {"a", "b"}} | kw
    return policy.declines(Ask(ledger, peer, peer, 0, 0), now=now, **options)


def test_super_seeding_declines_a_piece_just_sent_to_a_peer_still_connected() -> None:
    policy: Seeding[str] = Seeding(super_seed=True, whole_copy_first=False)
    ledger = Ledger(1, window=WINDOW)
    token, _ = ledger.sent(0, "a")
    assert declines(policy, ledger, "b", 100.0)  # still in the write buffer
    ledger.left(0, token, 100.0)
    assert declines(policy, ledger, "b", 100.0 + WINDOW - 0.1)
    assert not declines(policy, ledger, "b", 100.0 + WINDOW)  # the window has passed
    assert not declines(policy, ledger, "a", 101.0)  # its own receiver may ask again
    assert not declines(policy, ledger, "b", 101.0, connected={"b"})  # the receiver left: nobody passes it on
    assert not declines(policy, ledger, "b", 101.0, complete=False)  # only a complete torrent super-seeds
    assert not declines(policy, Ledger(1, window=WINDOW), "b", 101.0)  # never sent


def test_without_super_seeding_nothing_is_declined() -> None:
    policy: Seeding[str] = Seeding(super_seed=False, whole_copy_first=True)
    ledger = Ledger(2, window=WINDOW)
    ledger.sent(0, "a")
    assert not declines(policy, ledger, "b", 0.0)


def test_an_origin_sends_no_piece_twice_to_peers_still_connected_until_it_has_sent_every_piece() -> None:
    policy: Seeding[str] = Seeding(super_seed=True, whole_copy_first=True)
    ledger = Ledger(4, window=WINDOW)
    token, _ = ledger.sent(0, "a")
    ledger.left(0, token, 0.0)
    now = 20.0  # long past the window
    assert declines(policy, ledger, "b", now)  # pieces 1-3 were never sent
    assert not declines(policy, ledger, "a", now)  # its own receiver may ask again
    for index in (1, 2, 3):
        ledger.sent(index, "a")
    assert not declines(policy, ledger, "b", now)  # a whole copy is out: the window rules


def test_the_policy_imports_nothing_of_twisted() -> None:
    code = "import sys, kraken.p2p.seeding; assert not [m for m in sys.modules if m.startswith('twisted')]"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_validation() -> None:
    with pytest.raises(ValueError):
        Ledger(1, window=0.0)
    with pytest.raises(ValueError):
        Ledger(-1, window=1.0)


PEERS = ["p0", "p1", "p2", "p3"]
actions = st.lists(
    st.one_of(
        st.tuples(st.just("ask"), st.sampled_from(PEERS), st.integers(0, 5)),
        st.tuples(st.just("cancel"), st.sampled_from(PEERS), st.integers(0, 5)),
        st.tuples(st.sampled_from(["leave", "join", "block", "unblock", "drain"]), st.sampled_from(PEERS), st.just(0)),
        st.tuples(st.just("serve"), st.just(""), st.just(0)),
        st.tuples(st.just("tick"), st.just(""), st.integers(1, 6)),
    ),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(
    num_pieces=st.integers(1, 6),
    super_seed=st.booleans(),
    whole_copy_first=st.booleans(),
    holders=st.lists(st.integers(0, 3), min_size=6, max_size=6),
    steps=actions,
)
def test_simulation(
    num_pieces: int, super_seed: bool, whole_copy_first: bool, holders: list[int], steps: list[tuple[str, str, int]]
) -> None:
    """Peers come and go, ask, cancel and stall; the seeder serves and time passes. Whatever happens: only open,
    writable connections are served, in the policy's order; a request is answered at most once, and never after
    it was cancelled or its connection left; a piece is declined exactly when super-seeding says so; and an origin
    that super-seeds never sends a piece twice while an unsent piece remains and its receiver is connected."""
    policy: Seeding[str] = Seeding(super_seed=super_seed, whole_copy_first=whole_copy_first)
    ledger = Ledger(num_pieces, window=WINDOW)
    connected, blocked = set(PEERS), set()
    in_buffer: dict[str, list[tuple[int, int]]] = {p: [] for p in PEERS}  # sent, not yet drained: (piece, token)
    receivers: dict[int, list[str]] = {}  # who got each piece, in order
    answered: set[int] = set()  # seqs of the asks served or declined
    gone: set[int] = set()  # seqs of the asks cancelled or dropped with their connection
    now = 0.0

    for action, peer, n in steps:
        if action == "ask" and peer in connected:
            policy.ask(ledger, peer, peer, n % num_pieces)
        elif action == "cancel":
            gone.update(a.seq for a in policy.waiting() if a.conn == peer and a.index == n % num_pieces)
            policy.cancel(peer, n % num_pieces)
            assert not any(a.conn == peer and a.index == n % num_pieces for a in policy.waiting())
        elif action == "leave" and peer in connected:
            connected.discard(peer)
            gone.update(a.seq for a in policy.waiting() if a.conn == peer)
            policy.drop(peer)  # what the driver does when a connection closes
        elif action == "join":
            connected.add(peer)
        elif action in ("block", "unblock"):
            (blocked.add if action == "block" else blocked.discard)(peer)
        elif action == "drain" and peer not in blocked:
            for index, token in in_buffer[peer]:
                ledger.left(index, token, now)
            in_buffer[peer] = []
        elif action == "tick":
            now += n
        elif action == "serve":
            ready = [a for a in policy.waiting() if a.conn in connected and a.conn not in blocked]
            ask = policy.next(
                alive=connected.__contains__,
                writable=lambda c: c not in blocked,
                holders=lambda a: holders[a.index],
            )
            if ask is None:
                assert not ready
                assert all(a.conn in connected for a in policy.waiting())
                continue
            assert ask.conn in connected and ask.conn not in blocked
            assert ask.seq not in answered and ask.seq not in gone
            answered.add(ask.seq)
            best = min(ready, key=lambda a: (holders[a.index], ledger.copies(a.index), a.seq))
            assert ask is best
            last = ledger.last(ask.index)
            expected = (
                super_seed
                and last is not None
                and last[1] != ask.peer
                and last[1] in connected
                and ((whole_copy_first and not ledger.every_piece_sent()) or now - last[0] < WINDOW)
            )
            if policy.declines(ask, complete=True, connected=connected, now=now):
                assert expected
                continue
            assert not expected
            if super_seed and whole_copy_first and not ledger.every_piece_sent():
                earlier = receivers.get(ask.index, [])
                assert not earlier or earlier[-1] == ask.peer or earlier[-1] not in connected
            token, _ = ledger.sent(ask.index, ask.peer)
            receivers.setdefault(ask.index, []).append(ask.peer)
            in_buffer[ask.peer].append((ask.index, token))
