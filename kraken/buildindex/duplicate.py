"""Duplicate puts: every tag this build-index accepts is sent to the other
nodes of its cluster (Kraken's ``DuplicatePut``).

The k-th neighbour (1-based, in ``cluster.nodes`` order) is told to store
the tag and to queue its own write-back after k x ``duplicate_stagger``, a
write-back that leaves the backend alone if it already holds the tag; so the
accepting node normally writes the tag back and the others only step in if
it died first. A receiver stores the tag without checking its manifest again
and never duplicates it further.

Sends run in the background and never hold up the client's PUT. A failed
send is logged and tried again after ``backoff`` doubling per try, up to
``attempts`` tries (``kraken.net.retry.with_retries``, on the injected
clock); then it is given up with an error line (the copy is not durable: a
restart forgets sends in progress).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kraken.core import Digest
from kraken.net.retry import RetryPolicy, with_retries


class Neighbour(Protocol):
    """What a duplicate needs of ``BuildIndexClient``."""

    async def duplicate_tag(self, repo: str, tag: str, digest: Digest, *, delay: float) -> None: ...


class Duplicator(Service):
    """Sends accepted tags to ``neighbours`` (pairs of base URL and client)."""

    log = Logger()

    def __init__(
        self,
        neighbours: Sequence[tuple[str, Neighbour]],
        *,
        clock: IReactorTime,
        stagger: float,
        attempts: int = 5,
        backoff: float = 10.0,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        self.setName("duplicate")
        self._neighbours = list(neighbours)
        self._clock = clock
        self._stagger = stagger
        self._policy = RetryPolicy(attempts=attempts, backoff=backoff, max_backoff=math.inf)
        self._in_flight: set[Deferred[None]] = set()
        self._idle_waiters: list[Deferred[None]] = []
        self.sent = 0
        self.given_up = 0

    @property
    def neighbours(self) -> list[str]:
        return [url for url, _ in self._neighbours]

    def duplicate(self, repo: str, tag: str, digest: Digest) -> None:
        """Start sending ``repo:tag`` -> ``digest`` to every neighbour; returns at once."""
        for k, (url, client) in enumerate(self._neighbours, start=1):
            d = Deferred.fromCoroutine(self._send(url, client, repo, tag, digest, k * self._stagger))
            if not d.called:
                self._in_flight.add(d)
                d.addBoth(self._finished, d)

    def _finished(self, result: object, d: Deferred[None]) -> None:
        self._in_flight.discard(d)
        if not self._in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for w in waiters:
                w.callback(None)

    def when_idle(self) -> Deferred[None]:
        """Fires once no send is in progress."""
        d: Deferred[None] = Deferred()
        if self._in_flight:
            self._idle_waiters.append(d)
        else:
            d.callback(None)
        return d

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        running = list(self._in_flight)
        for d in running:
            d.cancel()
        return DeferredList(running, consumeErrors=True)

    async def _send(self, url: str, client: Neighbour, repo: str, tag: str, digest: Digest, delay: float) -> None:
        fields: dict[str, Any] = dict(namespace=repo, tag=tag, digest=str(digest), peer=url)
        tries = 0
        abandoned = False  # cancelled while sending (not while waiting to try again): logged

        async def attempt() -> None:
            nonlocal tries, abandoned
            tries += 1
            try:
                await client.duplicate_tag(repo, tag, digest, delay=delay)
            except CancelledError:
                abandoned = True
                raise

        def again(error: Exception, attempts: int, wait: float) -> None:
            self.log.warn(
                "duplicate of {namespace}:{tag} to {peer} failed (try {attempts}), again in {delay}s: {error}",
                attempts=attempts,
                delay=wait,
                error=str(error),
                **fields,
            )

        try:
            await with_retries(self._clock, self._policy, "duplicate", attempt, retryable=_any, on_retry=again)
        except CancelledError:
            if abandoned:
                self.log.info("duplicate of {namespace}:{tag} to {peer} abandoned: stopping", **fields)
            return
        except Exception as e:
            self.given_up += 1
            self.log.error(
                "duplicate of {namespace}:{tag} -> {digest} to {peer} given up after {attempts} tries: {error}",
                attempts=tries,
                error=str(e),
                **fields,
            )
            return
        self.sent += 1
        self.log.debug(
            "tag {namespace}:{tag} -> {digest} duplicated to {peer} (write-back after {delay}s)",
            delay=delay,
            **fields,
        )


def _any(error: Exception) -> bool:
    return True
