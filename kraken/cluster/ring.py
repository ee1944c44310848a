"""Rendezvous (highest random weight) hashing of blobs over the cluster's members.

Every member gets a score for each blob; the members in descending score
order are the blob's owners, and the first ``replicas`` of them hold it.
Any process that knows the same members computes the same placement, with
no coordination, and a membership change moves only what it must: when a
member leaves, the blobs it held move to the next member of their own
lists (the others keep their order); when one joins, it takes over exactly
the blobs where it scores high enough.

As in Kraken (``lib/hashring``, ``lib/hrw``), the key is the digest's shard,
its first four hex characters (65,536 shards), so placement can be computed
per shard and every blob of a shard lives together. The score is the first
eight bytes of ``blake2b(shard bytes || "host:port")`` as an unsigned
integer; all members weigh the same, so ordering by the hash is the same as
ordering by Kraken's ``-w / ln(u)``. Ties (never seen in practice) go to the
smaller member name. The hash is fixed: every version of every daemon must
agree on it, and a test pins known answers.

Pure: no Twisted, no clock, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

from kraken.core import Digest

DEFAULT_REPLICAS = 3
#: Hex characters of the digest that make its shard.
SHARD_HEX = 4


def shard_key(digest: Digest) -> bytes:
    """The bytes a digest is placed by: its shard (first four hex characters), decoded."""
    return bytes.fromhex(digest.hex[:SHARD_HEX])


def score(key: bytes, member: str) -> int:
    """The member's score for ``key``: a uniform 64-bit integer, stable across processes and versions."""
    h = hashlib.blake2b(key, digest_size=8)
    h.update(member.encode("utf-8"))
    return int.from_bytes(h.digest(), "big")


class Ring:
    """The placement of blobs over ``members`` ("host:port" strings).

    ``owners(digest)`` is every member, best first; its first ``replicas``
    entries are the placement. ``locations(digest, healthy)`` is the part of
    the placement a client should use now. The members are deduplicated and
    their order does not matter. An empty ring owns nothing.
    """

    def __init__(self, members: Iterable[str], replicas: int = DEFAULT_REPLICAS) -> None:
        if replicas <= 0:
            raise ValueError(f"replicas must be positive, not {replicas}")
        found = set(members)
        for m in found:
            if not isinstance(m, str) or not m:
                raise ValueError(f"a member must be a non-empty 'host:port' string, not {m!r}")
        self._members = tuple(sorted(found))
        self._replicas = replicas

    @property
    def members(self) -> tuple[str, ...]:
        """The members, sorted."""
        return self._members

    @property
    def replicas(self) -> int:
        return self._replicas

    def owners(self, digest: Digest) -> list[str]:
        """Every member, ordered by descending score for ``digest``."""
        key = shard_key(digest)
        return sorted(self._members, key=lambda m: (-score(key, m), m))

    def placement(self, digest: Digest) -> list[str]:
        """The members that hold ``digest``: the first ``replicas`` owners (fewer if the ring is smaller)."""
        return self.owners(digest)[: self._replicas]

    def owns(self, member: str, digest: Digest) -> bool:
        """Whether ``member`` is one of the ``replicas`` members that hold ``digest``."""
        return member in self.placement(digest)

    def locations(self, digest: Digest, healthy: Callable[[str], bool]) -> list[str]:
        """Where to go for ``digest`` now, best first.

        The healthy members of the placement, in score order. If none of them
        is healthy, the first healthy member further down the owners; if no
        member is healthy at all, the top owner (a request that may fail beats
        no answer). A one-member ring is always that member; an empty ring
        answers ``[]``.
        """
        owners = self.owners(digest)
        if len(owners) <= 1:
            return owners
        placed = [m for m in owners[: self._replicas] if healthy(m)]
        if placed:
            return placed
        for m in owners[self._replicas :]:
            if healthy(m):
                return [m]
        return owners[:1]

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member: object) -> bool:
        return member in self._members

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return (self._members, self._replicas) == (other._members, other._replicas)

    def __hash__(self) -> int:
        return hash((self._members, self._replicas))

    def __repr__(self) -> str:
        return f"Ring({list(self._members)!r}, replicas={self._replicas})"
