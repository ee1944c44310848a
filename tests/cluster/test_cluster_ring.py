"""Ring: rendezvous placement is stable, balanced, moves little, and skips unhealthy members."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable

import pytest

from kraken.cluster.ring import Ring, score, shard_key
from kraken.core import Digest

MEMBERS = [f"origin-{n}:15002" for n in range(1, 6)]
N_DIGESTS = 10_000


def random_digests(n: int = N_DIGESTS, seed: int = 4) -> list[Digest]:
    rng = random.Random(seed)
    return [Digest(f"{rng.getrandbits(256):064x}") for _ in range(n)]


DIGESTS = random_digests()


def within(count: int, expected: float, tolerance: float = 0.15) -> bool:
    return abs(count - expected) <= tolerance * expected


# -- stability --


def test_known_answers_are_pinned() -> None:
    # Every daemon of every version must agree: a change here is a change of placement in a running cluster.
    ring = Ring(["origin-1:15002", "origin-2:15002", "origin-3:15002", "origin-4:15002"], replicas=2)
    assert ring.owners(Digest.from_bytes(b"")) == [
        "origin-3:15002",
        "origin-1:15002",
        "origin-2:15002",
        "origin-4:15002",
    ]
    assert ring.owners(Digest.from_bytes(b"kraken")) == [
        "origin-1:15002",
        "origin-3:15002",
        "origin-2:15002",
        "origin-4:15002",
    ]
    assert ring.placement(Digest("ffff" + "0" * 60)) == ["origin-1:15002", "origin-2:15002"]


def test_placement_is_the_same_whatever_the_member_order() -> None:
    shuffled = list(MEMBERS)
    random.Random(7).shuffle(shuffled)
    a, b = Ring(MEMBERS), Ring([*reversed(shuffled), MEMBERS[0]])  # order and duplicates do not matter
    assert a == b
    assert a.members == tuple(sorted(MEMBERS))
    for d in DIGESTS[:2000]:
        assert a.owners(d) == b.owners(d)
        assert sorted(a.owners(d)) == sorted(MEMBERS)


def test_placement_is_the_first_replicas_owners() -> None:
    ring = Ring(MEMBERS, replicas=3)
    for d in DIGESTS[:500]:
        assert ring.placement(d) == ring.owners(d)[:3]
        assert all(ring.owns(m, d) for m in ring.placement(d))
        assert not any(ring.owns(m, d) for m in ring.owners(d)[3:])


def test_the_shard_is_the_key() -> None:
    d1 = Digest("abcd" + "0" * 60)
    d2 = Digest("abcd" + "f" * 60)
    assert shard_key(d1) == bytes.fromhex("abcd")
    assert Ring(MEMBERS).owners(d1) == Ring(MEMBERS).owners(d2)
    assert score(b"\xab\xcd", "origin-1:15002") == score(b"\xab\xcd", "origin-1:15002")
    assert 0 <= score(b"\xab\xcd", "origin-1:15002") < 2**64


# -- balance --


def test_first_owners_are_balanced() -> None:
    ring = Ring(MEMBERS, replicas=1)
    firsts = Counter(ring.placement(d)[0] for d in DIGESTS)
    fair = N_DIGESTS / len(MEMBERS)
    assert set(firsts) == set(MEMBERS)
    assert all(within(c, fair) for c in firsts.values()), firsts


def test_replica_sets_are_balanced() -> None:
    ring = Ring(MEMBERS, replicas=3)
    held = Counter(m for d in DIGESTS for m in ring.placement(d))
    fair = N_DIGESTS * 3 / len(MEMBERS)
    assert all(within(c, fair) for c in held.values()), held
    # and every position of the placement is balanced too
    for i in range(3):
        at = Counter(ring.placement(d)[i] for d in DIGESTS)
        assert all(within(c, N_DIGESTS / len(MEMBERS)) for c in at.values()), (i, at)


# -- movement --


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_a_member_leaving_moves_only_what_it_held(replicas: int) -> None:
    before = Ring(MEMBERS, replicas=replicas)
    leaver = MEMBERS[2]
    after = Ring([m for m in MEMBERS if m != leaver], replicas=replicas)
    moved = 0
    for d in DIGESTS:
        # The others keep their order: the leaver's blobs go to the next member of their own lists.
        assert after.owners(d) == [m for m in before.owners(d) if m != leaver]
        if after.placement(d) != before.placement(d):
            moved += 1
            assert leaver in before.placement(d)
            assert set(before.placement(d)) - {leaver} <= set(after.placement(d))
        else:
            assert leaver not in before.placement(d)
    if replicas == 1:
        assert within(moved, N_DIGESTS / len(MEMBERS)), moved


@pytest.mark.parametrize("replicas", [1, 3])
def test_a_member_joining_takes_only_what_it_now_holds(replicas: int) -> None:
    before = Ring(MEMBERS, replicas=replicas)
    joiner = "origin-6:15002"
    after = Ring([*MEMBERS, joiner], replicas=replicas)
    moved = 0
    for d in DIGESTS:
        assert [m for m in after.owners(d) if m != joiner] == before.owners(d)
        if after.placement(d) != before.placement(d):
            moved += 1
            assert joiner in after.placement(d)
            assert len(set(after.placement(d)) - set(before.placement(d))) == 1
        else:
            assert joiner not in after.placement(d)
    if replicas == 1:
        assert within(moved, N_DIGESTS / (len(MEMBERS) + 1)), moved


# -- locations --


def healthy_except(*down: str) -> Callable[[str], bool]:
    return lambda m: m not in down


def test_locations_are_the_placement_when_all_are_healthy() -> None:
    ring = Ring(MEMBERS, replicas=3)
    d = DIGESTS[0]
    assert ring.locations(d, healthy_except()) == ring.placement(d)


def test_locations_skip_unhealthy_members_of_the_placement() -> None:
    ring = Ring(MEMBERS, replicas=3)
    d = DIGESTS[1]
    first, second, third, *_ = ring.owners(d)
    assert ring.locations(d, healthy_except(first)) == [second, third]
    assert ring.locations(d, healthy_except(second)) == [first, third]
    assert ring.locations(d, healthy_except(first, third)) == [second]


def test_locations_fall_through_to_the_first_healthy_member_further_down() -> None:
    ring = Ring(MEMBERS, replicas=3)
    d = DIGESTS[2]
    owners = ring.owners(d)
    assert ring.locations(d, healthy_except(*owners[:3])) == [owners[3]]
    assert ring.locations(d, healthy_except(*owners[:4])) == [owners[4]]


def test_locations_with_nobody_healthy_are_the_top_owner() -> None:
    ring = Ring(MEMBERS, replicas=3)
    d = DIGESTS[3]
    assert ring.locations(d, lambda m: False) == [ring.owners(d)[0]]


def test_a_one_member_ring_is_always_that_member() -> None:
    ring = Ring(["solo:15002"])
    for d in DIGESTS[:50]:
        assert ring.owners(d) == ["solo:15002"]
        assert ring.locations(d, lambda m: False) == ["solo:15002"]
        assert ring.locations(d, lambda m: True) == ["solo:15002"]


def test_fewer_members_than_replicas() -> None:
    ring = Ring(MEMBERS[:2], replicas=3)
    d = DIGESTS[4]
    assert sorted(ring.placement(d)) == sorted(MEMBERS[:2])
    assert ring.locations(d, healthy_except()) == ring.owners(d)
    assert ring.locations(d, healthy_except(ring.owners(d)[0])) == ring.owners(d)[1:]


def test_an_empty_ring_owns_nothing() -> None:
    ring = Ring([])
    assert len(ring) == 0
    assert ring.owners(DIGESTS[0]) == []
    assert ring.locations(DIGESTS[0], lambda m: True) == []


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="replicas"):
        Ring(MEMBERS, replicas=0)
    with pytest.raises(ValueError, match="member"):
        Ring(["a:1", ""])
    with pytest.raises(ValueError, match="member"):
        Ring(["a:1", 5])  # type: ignore[list-item]


def test_membership_and_repr() -> None:
    ring = Ring(MEMBERS, replicas=2)
    assert MEMBERS[0] in ring and "other:1" not in ring
    assert len(ring) == 5 and ring.replicas == 2
    assert ring != Ring(MEMBERS, replicas=3)
    assert hash(ring) == hash(Ring(list(reversed(MEMBERS)), replicas=2))
    assert "replicas=2" in repr(ring)


def test_the_ring_imports_no_twisted_and_nothing_of_ours_but_core() -> None:
    code = (
        "import sys, kraken.cluster.ring; "
        "assert not [m for m in sys.modules if m.startswith('twisted')], 'twisted imported'; "
        "ours = sorted(m for m in sys.modules if m.startswith('kraken.') "
        "and not m.startswith(('kraken.core', 'kraken.cluster'))); "
        "assert not ours, ours"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
