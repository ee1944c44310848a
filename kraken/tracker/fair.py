"""Which of a swarm's peers an answer gets, fairly across announcing addresses.

Anyone can announce made-up peers, so the peers a source address announced
(its "group") get an equal share of an answer, not a share in proportion to
how many it announced. The choice goes in rounds: every group offers its
first peer, then its second, and so on, each group its completed peers
before its incomplete ones; within a round completed peers come before
incomplete ones, and the order is random within a round and class. So a
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
    out = shuffled(group.seeders, k, random)
    if len(out) < k:
        out += shuffled(group.leechers, k - len(out), random)
    return out


def _one(peers: list[PeerInfo], random: Callable[[], float]) -> PeerInfo:
    return peers[int(random() * len(peers))]


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
    if n >= k:
        if len(seeding) >= k:
            return [_one(g.seeders, random) for g in shuffled(seeding, k, random)]
        out = [_one(g.seeders, random) for g in shuffled(seeding, len(seeding), random)]
        # Then groups of leechers only, drawn at random from all groups; a group with a
        # seeder has given it already and is passed over (there are fewer than k of those).
        pool = list(groups)
        for i in range(n):
            j = i + int(random() * (n - i))
            pool[i], pool[j] = pool[j], pool[i]
            if not pool[i].seeders:
                out.append(_one(pool[i].leechers, random))
                if len(out) == k:
                    break
        return out
    return _rounds(groups, k, random)


def _rounds(groups: Sequence[Group], k: int, random: Callable[[], float]) -> list[PeerInfo]:
    """Fewer groups than ``k``: every group gives up to a level ``L`` (all it
    has if that is less), the smallest level that fills ``k``, and the peers
    are ordered by round, then class, then at random."""
    sizes = [len(g.seeders) + len(g.leechers) for g in groups]
    level = max(sizes)
    taken = 0
    ascending = sorted(sizes)
    n = len(ascending)
    for i, size in enumerate(ascending):
        if taken + size * (n - i) >= k:
            level = -(-(k - taken) // (n - i))
            break
        taken += size
    ranked: list[tuple[int, bool, float, PeerInfo]] = []
    for group in groups:
        for rank, peer in enumerate(_first(group, level, random)):
            ranked.append((rank, not peer.complete, random(), peer))
    ranked.sort(key=lambda r: r[:3])
    return [r[3] for r in ranked[:k]]
