"""kraken.tracker.fair: announcing addresses, shuffling, and the fair choice across addresses."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tracker_fakes import peer

from kraken.core.peer import PeerInfo
from kraken.tracker.fair import fair_sample, shuffled, source_key


class G:
    """A group: the peers one address announced."""

    def __init__(self, seeders: list[PeerInfo], leechers: list[PeerInfo]) -> None:
        self.seeders = seeders
        self.leechers = leechers


def group(base: int, seeders: int, leechers: int) -> G:
    return G(
        [peer(base + n, complete=True) for n in range(seeders)],
        [peer(base + seeders + n) for n in range(leechers)],
    )


def pick(groups: list[G], k: int, seed: int = 0) -> list[PeerInfo]:
    return fair_sample(groups, [g for g in groups if g.seeders], k, random.Random(seed).random)


def owner(groups: list[G]) -> dict[str, int]:
    return {p.peer_id: i for i, g in enumerate(groups) for p in [*g.seeders, *g.leechers]}


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("10.0.0.7", "10.0.0.7"),
        ("127.0.0.2", "127.0.0.2"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:10.0.0.7", "10.0.0.7"),
        ("fe80::1%eth0", "fe80::/64"),
        (None, "local"),
    ],
)
def test_source_key(host: str | None, key: str) -> None:
    assert source_key(host) == key


def test_shuffled() -> None:
    rng = random.Random(5)
    population = [peer(n) for n in range(10)]
    assert sorted(shuffled(population, 10, rng.random), key=population.index) == population
    assert len(shuffled(population, 20, rng.random)) == 10
    assert shuffled(population, 0, rng.random) == []
    assert shuffled([], 3, rng.random) == []
    got = shuffled(population, 4, rng.random)
    assert len(got) == 4 and len(set(got)) == 4 and set(got) <= set(population)
    assert population == [peer(n) for n in range(10)], "the population is left alone"
    # Every order is possible: the first place is uniform even when everything is taken.
    firsts = Counter(shuffled(population[:5], 5, rng.random)[0] for _ in range(2500))
    assert len(firsts) == 5 and all(400 < c < 600 for c in firsts.values()), firsts


def test_one_address_gives_its_seeders_then_its_leechers_at_random() -> None:
    g = group(0, 3, 10)
    got = pick([g], 5)
    assert [p.complete for p in got] == [True] * 3 + [False] * 2
    assert len(pick([g], 50)) == 13
    assert pick([g], 50, 1) != pick([g], 50, 2)
    assert pick([], 5) == [] and pick([g], 0) == []


def test_a_flooding_address_gets_an_equal_share_and_only_the_leftover_room() -> None:
    honest = group(0, 2, 20)  # 2 completed agents, 20 downloading, all on one host (a loopback test)
    flood = group(1000, 200, 0)  # 200 made-up completed peers from another address
    groups = [honest, flood]
    got = pick(groups, 51)
    who = owner(groups)
    counts = Counter(who[p.peer_id] for p in got)
    assert counts == {0: 22, 1: 29}, "all of the honest host's peers; the flood fills only the rest"
    # In the order of rounds: the first 44 alternate, one from each address per round.
    assert Counter(who[p.peer_id] for p in got[:44]) == {0: 22, 1: 22}
    assert all({who[p.peer_id] for p in got[2 * r : 2 * r + 2]} == {0, 1} for r in range(22))
    # Within a round completed before downloading; the honest completed agents come in rounds 0 and 1.
    assert {p.peer_id for p in got[:4]} >= {p.peer_id for p in honest.seeders}
    # A smaller answer splits evenly.
    assert Counter(who[p.peer_id] for p in pick(groups, 10)) == {0: 5, 1: 5}


def test_many_addresses_one_peer_each_from_the_addresses_with_seeders_first() -> None:
    groups = [group(10 * n, 1 if n % 4 == 0 else 0, 1 if n % 4 else 0) for n in range(100)]  # 25 seeding
    got = pick(groups, 30)
    who = owner(groups)
    assert len({who[p.peer_id] for p in got}) == 30, "one peer from each of 30 addresses"
    assert [p.complete for p in got] == [True] * 25 + [False] * 5
    got = pick(groups, 20)
    assert len(got) == 20 and all(p.complete for p in got)
    # An address with a seeder and leechers gives its seeder in round 0 and nothing more.
    groups = [group(0, 1, 5)] + [group(100 + 10 * n, 0, 1) for n in range(40)]
    got = pick(groups, 30)
    assert got[0].complete and sum(owner(groups)[p.peer_id] == 0 for p in got) == 1


def test_a_flood_of_addresses_with_seeders_shares_fairly_too() -> None:
    flood = [group(1000 + 10 * n, 3, 0) for n in range(60)]  # 60 addresses of made-up seeders
    honest = [group(10 * n, 1, 0) for n in range(40)]
    counts = Counter()
    for seed in range(200):
        got = pick(flood + honest, 50, seed)
        counts.update("honest" if p.peer_id in owner(honest) else "flood" for p in got)
    # 40 of 100 addresses are honest: 40 % of the peers handed out, not 40 / 220 of the peers held.
    assert 0.35 < counts["honest"] / (200 * 50) < 0.45, counts


groups_st = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=12)


@given(sizes=groups_st, k=st.integers(0, 40), seed=st.integers(0, 2**32))
def test_fair_sample_properties(sizes: list[tuple[int, int]], k: int, seed: int) -> None:
    groups = [group(100 * i, seeders, leechers) for i, (seeders, leechers) in enumerate(sizes) if seeders + leechers]
    got = pick(groups, k, seed)
    who = owner(groups)
    assert len(got) == min(k, len(who))
    assert len({p.peer_id for p in got}) == len(got)
    given = Counter(who[p.peer_id] for p in got)
    held = [len(g.seeders) + len(g.leechers) for g in groups]
    for a in range(len(groups)):
        for b in range(len(groups)):
            if given[a] > given[b] + 1:
                assert given[b] == held[b], "only an address with nothing more to give gets less"
        mine = [p for p in got if who[p.peer_id] == a]
        assert sum(p.complete for p in mine) == min(len(groups[a].seeders), len(mine)), "seeders first"
    # Rounds: the r-th peer an address gives comes after every address's (r-1)-th.
    rank: Counter[int] = Counter()
    ranks = []
    for p in got:
        ranks.append(rank[who[p.peer_id]])
        rank[who[p.peer_id]] += 1
    assert ranks == sorted(ranks)
