"""Which of many blobs the origin cluster holds, in a few questions.

A manifest names up to hundreds of blobs; asking about each with its own
requests (a locations lookup and a HEAD) is one request per reference at
once. ``stat_many`` instead, for each ``MAX_STAT_BATCH`` digests, in turn:

1. asks one member (a seed, the next one if it fails; at most
   ``ClusterClient.ASK``) ``POST /blobs/stat``: the sizes of the blobs its
   store holds and, for the others, their locations in the ring (which are
   remembered, as ``ClusterClient.locations`` does);
2. asks each other member of the placement of a blob still unknown
   ``POST /blobs/stat`` about those blobs (one question a member);
3. for each blob that no member of its placement holds, if one of them could
   fetch it from a storage backend (``may_fetch``) or did not answer (a member
   down, or too old to know the route), calls ``single`` (a full ``stat``,
   with its failover and polling).

A blob that no member of its placement holds and none could fetch is absent:
the replicas are all the ring has. Requests in flight are
at most ``concurrency`` in steps 2 and 3. Cancelling cancels what is in
flight and starts nothing more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from twisted.logger import Logger

from kraken.core import Digest
from kraken.net import HTTPStatusError
from kraken.net.bounded import bounded_map, chunks
from kraken.net.retry import NETWORK_ERRORS

if TYPE_CHECKING:
    from kraken.origin.client import ClusterClient, StatAnswer

#: The most digests one ``POST /blobs/stat`` may ask about (the origin refuses more with 413).
MAX_STAT_BATCH = 1000

log = Logger()

Single = Callable[[str, Digest], Awaitable[int | None]]


async def stat_many(
    cluster: ClusterClient,
    namespace: str,
    digests: Sequence[Digest],
    *,
    concurrency: int,
    single: Single,
) -> dict[Digest, int | None]:
    """See the module docstring."""
    sizes: dict[Digest, int | None] = {}
    unique = list(dict.fromkeys(digests))
    # The body cap is made for sha256 digests: sha512 ones, twice as long, go in half batches.
    batch = MAX_STAT_BATCH if all(d.algorithm == "sha256" for d in unique) else MAX_STAT_BATCH // 2
    for chunk in chunks(unique, batch):
        sizes.update(await _stat_chunk(cluster, namespace, chunk, concurrency, single))
    return sizes


async def _stat_chunk(
    cluster: ClusterClient, namespace: str, digests: list[Digest], concurrency: int, single: Single
) -> dict[Digest, int | None]:
    sizes: dict[Digest, int | None] = {}
    unsure: list[Digest] = []
    asked = await _ask_seeds(cluster, digests)
    if asked is None:
        unsure = digests
    else:
        seed, first = asked
        sizes.update(first.held)
        scheme = urlsplit(seed).scheme
        placements: dict[Digest, tuple[str, ...]] = {}
        owners: dict[str, list[Digest]] = {}
        for digest in digests:
            if digest in first.held:
                continue
            members = first.locations.get(digest)
            if not members:
                unsure.append(digest)
                continue
            bases = placements[digest] = tuple(f"{scheme}://{m}" for m in members)
            cluster.remember_locations(digest, bases)  # the single stats below need not ask again
            for base in bases:
                if base != seed:
                    owners.setdefault(base, []).append(digest)
        groups = list(owners.items())
        answers = await bounded_map(groups, concurrency, lambda group: _ask(cluster, group[0], group[1]))
        told: dict[str, StatAnswer | None] = {seed: first}
        told.update((base, answer) for (base, _), answer in zip(groups, answers, strict=True))
        for digest, bases in placements.items():
            answered = [told[b] for b in bases]
            held = [a.held[digest] for a in answered if a is not None and digest in a.held]
            if held:
                sizes[digest] = held[0]
            elif any(a is None or a.may_fetch for a in answered):
                unsure.append(digest)  # a member did not answer, or may fetch it from a backend
            else:
                sizes[digest] = None  # none of its placement holds it, and none could fetch it

    async def one(digest: Digest) -> int | None:
        cluster.single_stats += 1
        return await single(namespace, digest)

    found = await bounded_map(unsure, concurrency, one)
    sizes.update(zip(unsure, found, strict=True))
    return sizes


async def _ask_seeds(cluster: ClusterClient, digests: list[Digest]) -> tuple[str, StatAnswer] | None:
    """The first answer of up to ``ASK`` seeds, at random, and who gave it; None if none answered."""
    for seed in cluster.seeds_to_ask():
        answer = await _ask(cluster, seed, digests)
        if answer is not None:
            return seed, answer
    return None


async def _ask(cluster: ClusterClient, base: str, digests: list[Digest]) -> StatAnswer | None:
    """``POST /blobs/stat`` to ``base``; None if it failed (logged): the caller falls back."""
    cluster.batch_stats += 1
    try:
        return await cluster.client(base).stat_batch(digests)
    except (HTTPStatusError, *NETWORK_ERRORS) as e:
        log.warn(
            "asking {origin} about {count} blobs at once failed ({error}); falling back",
            origin=base,
            count=len(digests),
            error=str(e),
        )
        return None
