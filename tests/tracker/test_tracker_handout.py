"""handout(): class order, the cap, the requester left out."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st
from tracker_fakes import peer

from kraken.core.peer import PeerInfo
from kraken.tracker.handout import handout, peer_class


def classes(peers: list[PeerInfo]) -> list[int]:
    return [peer_class(p) for p in peers]


def test_completed_agents_then_origins_then_the_rest() -> None:
    agents = [peer(n, complete=n % 2 == 0) for n in range(10)]
    origins = [peer(100 + n, complete=True, origin=True) for n in range(2)]
    out = handout(agents, origins, peer(999).peer_id, 50, random.Random(3))
    assert classes(out) == [0] * 5 + [1] * 2 + [2] * 5
    assert set(out) == set(agents) | set(origins)


def test_random_within_a_class_and_reproducible_with_a_seed() -> None:
    agents = [peer(n, complete=True) for n in range(20)]
    a = handout(agents, [], "f" * 40, 50, random.Random(1))
    b = handout(agents, [], "f" * 40, 50, random.Random(1))
    c = handout(agents, [], "f" * 40, 50, random.Random(2))
    assert a == b
    assert a != c
    assert a != agents


def test_the_requester_is_never_handed_out() -> None:
    me = peer(5)
    out = handout([peer(n) for n in range(10)], [], me.peer_id, 50, random.Random(0))
    assert me not in out
    assert len(out) == 9


def test_capped_at_the_limit_keeping_the_best_classes() -> None:
    agents = [peer(n) for n in range(60)] + [peer(100 + n, complete=True) for n in range(3)]
    origins = [peer(200, complete=True, origin=True)]
    out = handout(agents, origins, "f" * 40, 5, random.Random(0))
    assert classes(out) == [0, 0, 0, 1, 2]
    assert len(handout(agents, origins, "f" * 40, rng=random.Random(0))) == 50  # the default limit
    assert handout(agents, origins, "f" * 40, 0, random.Random(0)) == []


def test_a_peer_listed_twice_counts_once_and_the_origin_entry_wins() -> None:
    origin = peer(7, complete=True, origin=True)
    out = handout([peer(7), peer(8)], [origin], "f" * 40, 50, random.Random(0))
    assert out == [origin, peer(8)]


peers_st = st.builds(
    lambda n, complete, origin: peer(n, complete=complete or origin, origin=origin),
    st.integers(0, 40),
    st.booleans(),
    st.booleans(),
)


@given(
    agents=st.lists(peers_st, max_size=40),
    origins=st.lists(peers_st.map(lambda p: peer(int(p.peer_id, 16) + 100, complete=True, origin=True)), max_size=4),
    requester=st.integers(0, 45),
    limit=st.integers(0, 60),
    seed=st.integers(0, 2**32),
)
def test_handout_properties(
    agents: list[PeerInfo], origins: list[PeerInfo], requester: int, limit: int, seed: int
) -> None:
    me = peer(requester).peer_id
    out = handout(agents, origins, me, limit, random.Random(seed))
    assert me not in [p.peer_id for p in out]
    assert len(out) <= limit
    assert classes(out) == sorted(classes(out))
    assert len({p.peer_id for p in out}) == len(out)
    candidates = {p.peer_id for p in [*agents, *origins] if p.peer_id != me}
    assert len(out) == min(limit, len(candidates))
