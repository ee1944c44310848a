"""handout(): class order, the cap, the requester left out."""

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


def test_uniform_within_a_class() -> None:
    rng = random.Random(11)
    agents = [peer(n) for n in range(6)]
    firsts = Counter(handout(agents, [], "f" * 40, 2, rng)[0].peer_id for _ in range(3000))
    # 500 each on average; 5 sigma is about 100.
    assert len(firsts) == 6 and all(400 < c < 600 for c in firsts.values()), firsts
