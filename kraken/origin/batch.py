"""Which of many blobs the origin cluster holds, in a few questions.

A manifest names up to hundreds of blobs; asking about each with its own
requests (a locations lookup and a HEAD) is one request per reference at
once. ``stat_many`` instead, for each ``MAX_STAT_BATCH`` digests, in turn:

1. asks one member (a seed, the next one if it fails; at most
   ``ClusterClient.ASK``) ``POST /blobs/stat``: the sizes of the blobs its
   store holds and, for the others, their locations in the ring (which are
   remembered, as ``ClusterClient.locations`` does);
2. asks each other member that comes first in the placement of a blob still
   unknown ``POST /blobs/stat`` about those blobs (one question a member);
3. for each blob still not held whose first location could fetch it (from a
   backend, or a replica: ``may_fetch``), or whose question failed (a member
   down, or too old to know the route), calls ``single`` (a full ``stat``,
   with its failover and polling).

A blob absent from its first location that cannot fetch is absent, as a
404 from that location is for ``ClusterClient.stat``. Requests in flight are
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
    for chunk in chunks(list(dict.fromkeys(digests)), MAX_STAT_BATCH):
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
        owners: dict[str, list[Digest]] = {}
        for digest in digests:
            if digest in first.held:
                continue
            members = first.locations.get(digest)
            if not members:
                unsure.append(digest)
                continue
            bases = tuple(f"{scheme}://{m}" for m in members)
            cluster._remember(digest, bases)  # the single stats below need not ask again
            if bases[0] != seed:
                owners.setdefault(bases[0], []).append(digest)
            elif first.may_fetch:
                unsure.append(digest)
            else:
                sizes[digest] = None
        groups = list(owners.items())
        answers = await bounded_map(groups, concurrency, lambda group: _ask(cluster, group[0], group[1]))
        for (_, group), answer in zip(groups, answers, strict=True):
            for digest in group:
                if answer is not None and digest in answer.held:
                    sizes[digest] = answer.held[digest]
                elif answer is None or answer.may_fetch:
                    unsure.append(digest)
                else:
                    sizes[digest] = None

    async def one(digest: Digest) -> int | None:
        cluster.single_stats += 1
        return await single(namespace, digest)

    found = await bounded_map(unsure, concurrency, one)
    sizes.update(zip(unsure, found, strict=True))
    return sizes


async def _ask_seeds(cluster: ClusterClient, digests: list[Digest]) -> tuple[str, StatAnswer] | None:
    """The first answer of up to ``ASK`` seeds, at random, and who gave it; None if none answered."""
    seeds = list(cluster._seeds)
    cluster._rng.shuffle(seeds)
    for seed in seeds[: cluster.ASK]:
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
