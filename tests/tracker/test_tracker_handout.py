"""handout(): the origins first, then the store's choice in its order; the cap; the requester left out."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tracker_fakes import peer

from kraken.core.peer import PeerInfo
from kraken.tracker.handout import AnswerEncoder, handout, peer_class


def test_origins_first_then_the_peers_in_the_order_given() -> None:
    agents = [peer(n, complete=n % 2 == 0) for n in range(10)]
    origins = [peer(100 + n, complete=True, origin=True) for n in range(2)]
    out = handout(agents, origins, peer(999).peer_id, 50, random.Random(3))
    assert set(out[:2]) == set(origins)
    assert out[2:] == agents
    assert [peer_class(p) for p in out[:3]] == [1, 1, 0]


def test_origins_keep_their_room_however_many_completed_peers_come_first() -> None:
    flood = [peer(n, complete=True) for n in range(60)]
    origins = [peer(200 + n, complete=True, origin=True) for n in range(3)]
    out = handout(flood, origins, "f" * 40, 50, random.Random(0))
    assert len(out) == 50
    assert set(out[:3]) == set(origins)
    assert out[3:] == flood[:47]
    assert handout(flood, origins, "f" * 40, 2, random.Random(0))[0].origin, "even a cap below the origins"
    assert len(handout(flood, origins, "f" * 40, 2, random.Random(0))) == 2
    assert handout(flood, origins, "f" * 40, 0, random.Random(0)) == []


def test_the_origins_order_is_random_and_reproducible_with_a_seed() -> None:
    origins = [peer(100 + n, complete=True, origin=True) for n in range(4)]
    firsts = Counter(handout([], origins, "f" * 40, 50, random.Random(seed))[0].peer_id for seed in range(400))
    assert len(firsts) == 4 and all(60 < c < 140 for c in firsts.values()), firsts
    assert handout([], origins, "f" * 40, 50, random.Random(1)) == handout([], origins, "f" * 40, 50, random.Random(1))


def test_the_requester_is_never_handed_out() -> None:
    me = peer(5)
    out = handout([peer(n) for n in range(10)], [], me.peer_id, 50, random.Random(0))
    assert me not in out
    assert len(out) == 9
    origin = peer(7, complete=True, origin=True)
    assert handout([], [origin], origin.peer_id, 50, random.Random(0)) == []


def test_a_peer_listed_twice_counts_once_and_the_origin_entry_wins() -> None:
    origin = peer(7, complete=True, origin=True)
    out = handout([peer(7), peer(8), peer(8)], [origin, origin], "f" * 40, 50, random.Random(0))
    assert out == [origin, peer(8)]


peers_st = st.builds(lambda n, complete: peer(n, complete=complete), st.integers(0, 40), st.booleans())


@given(
    agents=st.lists(peers_st, max_size=40),
    origins=st.lists(st.integers(30, 45).map(lambda n: peer(n, complete=True, origin=True)), max_size=4),
    requester=st.integers(0, 45),
    limit=st.integers(0, 60),
    seed=st.integers(0, 2**32),
)
def test_handout_properties(
    agents: list[PeerInfo], origins: list[PeerInfo], requester: int, limit: int, seed: int
) -> None:
    me = peer(requester).peer_id
    out = handout(agents, origins, me, limit, random.Random(seed))
    ids = [p.peer_id for p in out]
    assert me not in ids
    assert len(out) <= limit
    assert len(set(ids)) == len(out)
    wanted_origins = {o.peer_id for o in origins} - {me}
    assert {p.peer_id for p in out if p.origin} == set(list(wanted_origins)[:limit]) or len(out) == limit
    assert [p.origin for p in out] == sorted((p.origin for p in out), reverse=True), "origins first"
    first_of_each: dict[str, PeerInfo] = {}
    for p in agents:
        first_of_each.setdefault(p.peer_id, p)
    given_order = [p for pid, p in first_of_each.items() if pid not in wanted_origins and pid != me]
    assert [p for p in out if not p.origin] == given_order[: len(out) - sum(p.origin for p in out)]
    candidates = {p.peer_id for p in [*agents, *origins] if p.peer_id != me}
    assert len(out) == min(limit, len(candidates))


def compact(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def test_answers_are_byte_for_byte_json_dumps() -> None:
    peers = [peer(1), peer(2, complete=True), peer(200, complete=True, origin=True), PeerInfo("ab" * 32, "::1", 80)]
    for interval in (3.0, 2.5, 10):
        encoder = AnswerEncoder(interval)
        assert encoder.encode(peers) == compact({"peers": [p.to_json() for p in peers], "interval": interval})
        assert encoder.encode([]) == compact({"peers": [], "interval": interval})


def test_each_peer_is_encoded_once_and_a_changed_peer_again(monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = AnswerEncoder(3.0)
    encoded: list[str] = []
    real = PeerInfo.to_json

    def counting(self: PeerInfo) -> dict[str, object]:
        encoded.append(self.peer_id)
        return real(self)

    monkeypatch.setattr(PeerInfo, "to_json", counting)
    a, b = peer(1), peer(2)
    encoder.encode([a, b])
    encoder.encode([b, a])
    assert encoded == [a.peer_id, b.peer_id]
    same_as_a = PeerInfo(a.peer_id, a.ip, a.port)  # the agent's announce of another blob: an equal object
    assert same_as_a is not a
    assert encoder.encode([same_as_a]) == encoder.encode([a])
    assert encoded == [a.peer_id, b.peer_id]
    completed = peer(1, complete=True)
    assert json.loads(encoder.encode([completed]))["peers"] == [real(completed)]
    assert encoded == [a.peer_id, b.peer_id, a.peer_id]
    assert len(encoder) == 2


def test_the_memo_is_bounded() -> None:
    encoder = AnswerEncoder(3.0, size=3)
    for n in range(10):
        encoder.encode([peer(n)])
        assert len(encoder) <= 3
    assert json.loads(encoder.encode([peer(4), peer(9)]))["peers"] == [peer(4).to_json(), peer(9).to_json()]
    with pytest.raises(ValueError, match="positive"):
        AnswerEncoder(3.0, size=0)
