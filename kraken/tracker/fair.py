"""Which of a swarm's peers an answer gets, fairly across announcing addresses.

Anyone can announce made-up peers, so the peers a source address announced
(its "group") get an equal share of an answer, not a share in proportion to
how many it announced. The choice goes in rounds: every group offers its
first peer, then its second, and so on, each group its completed peers
before its incomplete ones; within a round completed peers come before
incomplete ones, and the groups take their turns in a random order. So a
group gets more than an equal share only of the room that the other groups
cannot fill, and an answer lists the peers in that order, which is the
order an agent dials them in.

With one group (every agent on one host, or behind one NAT) that is what
the tracker did before groups: completed peers first, then the others, in a
random order. With more groups than room (a cluster of hosts, one agent
each) it is one peer from each of a random choice of groups, the groups with
a completed peer first. No step looks at every peer of a swarm: the cost
grows with the answer and, when there are fewer groups than room, with the
number of groups.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from kraken.core.peer import PeerInfo

T = TypeVar("T")


class Group(Protocol):
    """The peers one source address announced for one blob, that may be handed out."""

    @property
    def seeders(self) -> list[PeerInfo]: ...

    @property
    def leechers(self) -> list[PeerInfo]: ...


def source_key(host: str | None) -> str:
    """The group an announce from ``host`` (the client address of the request,
    not the ip in its body) belongs to: the IPv4 address itself; for IPv6 the
    /64 it is in, since one host commonly holds a whole /64 (an IPv4-mapped
    address counts as the IPv4 address); ``"local"`` for a request that did
    not come over IP (a UNIX socket)."""
    if host is None:
        return "local"
    if ":" not in host:
        return host
    try:
        ip = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


def shuffled(population: Sequence[T], k: int, random: Callable[[], float]) -> list[T]:
    """``min(k, len(population))`` of ``population`` in a uniformly random
    order: a partial Fisher-Yates shuffle of a copy with ``random()`` floats
    (``random.sample`` draws each index with ``getrandbits`` in Python, three
    times slower at the tracker's sizes)."""
    pool = list(population)
    n = len(pool)
    k = min(k, n)
    for i in range(min(k, n - 1)):
        j = i + int(random() * (n - i))
        pool[i], pool[j] = pool[j], pool[i]
    del pool[k:]
    return pool


def _first(group: Group, k: int, random: Callable[[], float]) -> list[PeerInfo]:
    """The first ``k`` peers ``group`` offers: its seeders, then its leechers, each in a random order."""
    seeders, leechers = group.seeders, group.leechers
    if not seeders:
        return leechers[:] if len(leechers) == 1 else shuffled(leechers, k, random)
    if not leechers:
        return seeders[:] if len(seeders) == 1 else shuffled(seeders, k, random)
    out = shuffled(seeders, k, random)
    if len(out) < k:
        out += shuffled(leechers, k - len(out), random)
    return out


def fair_sample(
    groups: Sequence[Group], seeding: Sequence[Group], k: int, random: Callable[[], float]
) -> list[PeerInfo]:
    """At most ``k`` peers of ``groups`` (every group with a peer to hand out;
    ``seeding`` those of them with a seeder), chosen and ordered in rounds as
    the module says. Fewer than ``k`` only when the groups hold fewer."""
    n = len(groups)
    if n == 0 or k <= 0:
        return []
    if n == 1:
        return _first(groups[0], k, random)
    if n < k:
        return _rounds(groups, k, random)
    # Round 0 alone fills the answer: one peer from each of k groups, those with a seeder first.
    s = len(seeding)
    if s >= k:
        return [g.seeders[int(random() * len(g.seeders))] for g in shuffled(seeding, k, random)]
    out = [g.seeders[int(random() * len(g.seeders))] for g in shuffled(seeding, s, random)]
    # Then groups of leechers only. Of any k groups at most s have a seeder, so k groups drawn
    # at random hold at least k - s without one; the first of those are a uniform choice.
    out += [g.leechers[int(random() * len(g.leechers))] for g in shuffled(groups, k, random) if not g.seeders]
    del out[k:]
    return out


def _rounds(groups: Sequence[Group], k: int, random: Callable[[], float]) -> list[PeerInfo]:
    """Fewer groups than ``k``: every group gives up to a level ``L`` (all it
    has if that is less), the smallest level that fills ``k``; the peers go
    round by round, each round its seeders then its leechers, the groups in
    a random order."""
    sizes = [len(g.seeders) + len(g.leechers) for g in groups]
    n = len(sizes)
    level = max(sizes)
    if sum(sizes) > k:
        taken = 0
        for i, size in enumerate(sorted(sizes)):
            if taken + size * (n - i) >= k:
                level = -(-(k - taken) // (n - i))
                break
            taken += size
    # The groups in a random order, the same in every round of this answer.
    order = shuffled(groups, n, random)
    if level == 1:  # one peer each (a small swarm of hosts, one agent each): a single round
        return [g.seeders[0] for g in order if g.seeders] + [g.leechers[0] for g in order if not g.seeders]
    queues = [_first(g, level, random) for g in order]
    out: list[PeerInfo] = []
    for r in range(level):
        leechers: list[PeerInfo] = []
        for queue in queues:
            if r < len(queue):
                peer = queue[r]
                if peer.complete:
                    out.append(peer)
                else:
                    leechers.append(peer)
        out += leechers
        if len(out) >= k:
            break
    del out[k:]
    return out
