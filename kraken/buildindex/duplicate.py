"""Duplicate puts: every tag this build-index accepts is sent to the other
nodes of its cluster (Kraken's ``DuplicatePut``), through a durable queue.

The k-th neighbour (1-based, in ``cluster.nodes`` order) is told to store
the tag and to queue its own write-back after k x ``duplicate_stagger``, a
write-back that leaves the backend alone if it already holds the tag; so the
accepting node normally writes the tag back and the others only step in if
it died first. A receiver checks the tag against its origin again, stores it
and never duplicates it further.

The copies are rows of the tag database's outbox (``kraken.buildindex.outbox``,
kind ``node``), written in the same transaction as the tag
(``TagIndex.put_tag`` asks ``copies()`` for them), so an accepted tag reaches
every node even if this one is killed right after answering the PUT: the
queue is drained again at the next start. It holds the latest digest per
(node, repo, tag): a tag moved while its copy waits is sent once, with its
new value. Receiving a copy is idempotent (the same tag stored again).

This loop (``kraken.taskqueue.TaskQueue``, on the injected clock) sends the
copies that are due, ``concurrency`` at a time. A send that fails (the node
is down, busy, or answers garbage) is tried again after ``backoff`` doubling
per failure up to ``backoff_max``, for as long as it takes. A node that
refuses the tag (400: its origin lacks the manifest or a reference) is tried
again the same way, ``attempts`` times in all, and then given up with an
error line. A copy for a node no longer in ``cluster.nodes`` is dropped with
one log line. Nothing here runs during a client's PUT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from kraken.buildindex.client import TagRefused
from kraken.buildindex.outbox import NODE, Copy, Outbox, OutboxQueue, OutboxTask
from kraken.core import Digest
from kraken.net import HTTPStatusError


class Neighbour(Protocol):
    """What a duplicate needs of ``BuildIndexClient``."""

    async def duplicate_tag(self, repo: str, tag: str, digest: Digest, *, delay: float) -> None: ...


@attrs.define
class DuplicateStats:
    """Counters since the loop started."""

    sent: int = 0  # copies a node accepted
    failures: int = 0  # failed tries (each tried again later)
    given_up: int = 0  # copies refused by their node ``attempts`` times
    dropped: int = 0  # copies for nodes no longer configured


class Duplicator(OutboxQueue):
    """Sends the queued copies to ``neighbours`` (pairs of base URL and client). Start it after the
    tag store; ``kick()`` after a tag was stored with ``copies()``."""

    what = "duplicate"
    task_name = "duplicate of {namespace}:{tag} to {peer}"
    dest_field = "peer"
    expected_errors = (TagRefused, HTTPStatusError, ConnectionError, TimeoutError)
    max_error = 500

    def __init__(
        self,
        neighbours: Sequence[tuple[str, Neighbour]],
        outbox: Outbox,
        *,
        clock: IReactorTime,
        stagger: float,
        attempts: int = 5,
        backoff: float = 10.0,
        backoff_max: float = 300.0,
        concurrency: int = 4,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        self.stats = DuplicateStats()
        super().__init__(outbox, clock, self.stats, concurrency, backoff, max(backoff, backoff_max))
        self.setName("duplicate")
        self._neighbours = dict(neighbours)
        self._stagger = stagger
        self._attempts = attempts

    @property
    def neighbours(self) -> list[str]:
        return list(self._neighbours)

    def copies(self) -> list[Copy]:
        """The outbox rows a tag accepted from a client gets: one per neighbour, the k-th asked to
        write back after k x stagger."""
        return [Copy(NODE, url, k * self._stagger) for k, url in enumerate(self._neighbours, start=1)]

    # -- OutboxQueue -------------------------------------------------------

    async def _run(self, task: OutboxTask) -> None:
        name, fields = self._describe(task)
        client = self._neighbours.get(task.dest)
        if client is None:
            await self._drop(task, "the node is no longer in cluster.nodes")
            return
        try:
            await client.duplicate_tag(task.repo, task.tag, task.digest, delay=task.delay)
        except CancelledError:
            raise  # stopping: the copy stays queued and is sent at the next start
        except TagRefused as e:
            if task.attempts + 1 >= self._attempts:
                self.stats.given_up += 1
                self.log.error(
                    name + " -> {digest} given up after {attempts} tries: {error}",
                    attempts=task.attempts + 1, error=str(e), **fields,
                )  # fmt: skip
                await self._outbox.done(task)
                return
            await self._failed(task, e, Failure())
            return
        except Exception as e:
            await self._failed(task, e, Failure())
            return
        self.stats.sent += 1
        self.log.info(name + " -> {digest} sent (write-back after {delay}s)", delay=task.delay, **fields)
        await self._outbox.done(task)
