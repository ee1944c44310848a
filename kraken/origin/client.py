"""The treq client of the origin cluster: ``ClusterClient``, as the proxy, tracker and build-index use it.

The origin's client seam. What one origin is asked lives in ``kraken.origin.single`` (``OriginClient``, re-exported
here with its headers and errors), the batch stat in ``kraken.origin.batch``, and moving from a blob's location
that fails to the next one in ``kraken.cluster.failover``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IBodyProducer, IResponse

from kraken.cluster.failover import Failover, fails_over, first_answer
from kraken.core import Digest, MetaInfo
from kraken.core.peer import PeerInfo
from kraken.net import HTTPClientConfig, RetryPolicy
from kraken.origin.batch import MAX_STAT_BATCH, stat_many
from kraken.origin.single import (
    LOCAL_HEADER,
    LOCATIONS_HEADER,
    POLL_TIMEOUT,
    REPAIR_HEADER,
    REPLICA_HEADER,
    STREAM_HEADER,
    OriginClient,
    RawHeaders,
    StatAnswer,
    StillFetching,
)
from kraken.origin.staged import UPLOAD_SIZE_HEADER, DigestRefused
from kraken.singleflight import SingleFlight
from kraken.workers import Worker

__all__ = [
    "LOCAL_HEADER",
    "LOCATIONS_HEADER",
    "MAX_STAT_BATCH",
    "REPAIR_HEADER",
    "REPLICA_HEADER",
    "STREAM_HEADER",
    "UPLOAD_SIZE_HEADER",
    "ClusterClient",
    "DigestRefused",
    "OriginClient",
    "StatAnswer",
    "StillFetching",
    "check_origins",
    "origin_urls",
]

T = TypeVar("T")
log = Logger()


def origin_urls(value: str | Sequence[str]) -> tuple[str, ...]:
    """A client config's ``origin``: one base URL or a list of them -> the list, without trailing slashes."""
    urls = (value,) if isinstance(value, str) else tuple(value)
    return tuple(u.rstrip("/") for u in urls)


def check_origins(instance: object, attribute: attrs.Attribute[Any], value: str | Sequence[str]) -> None:
    """Validate a client config's ``origin``: http(s) base URLs, at least one, no path."""
    urls = origin_urls(value)
    if not urls:
        raise ValueError(f"{attribute.name} must name at least one origin")
    for url in urls:
        parsed = urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path or parsed.query:
            raise ValueError(f"{attribute.name}: {url!r} is not an origin's base URL like http://origin-1:15002")


def _fails_over(error: BaseException) -> bool:
    """Whether a call to one origin that failed so should go to the next location."""
    if isinstance(error, StillFetching):
        return False  # the origin works; it waited its whole time for the backend
    return fails_over(error)


class ClusterClient:
    """Talks to the origin cluster, as the proxy, tracker and build-index do.

    ``origins`` are the base URLs of some members (one is enough: it knows
    the ring). For each blob the client asks up to ``ASK`` of them, at random,
    for the blob's locations (``GET /blobs/<digest>/locations``: the healthy
    members of its placement, best first), remembers the answer for
    ``locations_ttl`` seconds (one lookup in flight per blob, cancelled when
    nobody waits for it any more: ``kraken.singleflight``), and goes to the first location; a network
    error, 429 or any 5xx there moves on to the next (each location gets one
    attempt). When every location failed and one of them could not be
    reached (or answered 429, 502, 504), the locations are asked again and
    the round repeats after a backoff, as ``http_client.retries`` and
    ``backoff`` say; when all answered 500 or 503, the error is raised at
    once. A 404 or another answer below 500 ends the search:
    every location of a blob holds it, or can fetch it from the backend.
    (``kraken.cluster.failover.Failover``.)

    The methods are those of ``OriginClient``; ``upload`` goes to the first
    location that takes it, which copies the blob to the other replicas.
    """

    #: How many members are asked for a blob's locations before giving up on a round.
    ASK = 3

    def __init__(
        self,
        *,
        http: HTTPClient,
        origins: Sequence[str],
        clock: IReactorTime,
        config: HTTPClientConfig,
        worker: Worker,
        locations_ttl: float = 10.0,
        locations_cache: int = 10_000,
        rng: random.Random | None = None,
        poll_timeout: float = POLL_TIMEOUT,
    ) -> None:
        if not origins:
            raise ValueError("a cluster client needs at least one origin")
        self._http = http
        self._seeds = tuple(u.rstrip("/") for u in origins)
        self._clock = clock
        self._worker = worker
        self._rng = rng or random.Random()
        self._poll_timeout = poll_timeout
        self._once = attrs.evolve(config, retries=0)  # this client fails over instead
        self._clients: dict[str, OriginClient] = {}
        self._locations: SingleFlight[Digest, tuple[str, ...]] = SingleFlight(
            self._lookup, clock=clock, ttl=locations_ttl, size=locations_cache, abandon=True
        )
        self._failover: Failover[Digest] = Failover(
            clock=clock,
            policy=RetryPolicy.from_config(config),
            locations=self.locations,
            forget=self._locations.forget,
            kind="origin",
            fails_over=_fails_over,
        )
        #: ``stat_many``'s batch questions (``POST /blobs/stat``) and the single stats it fell back to.
        self.batch_stats = 0
        self.single_stats = 0

    @property
    def failovers(self) -> int:
        """Calls that went on to the next location."""
        return self._failover.failovers

    @property
    def failed_rounds(self) -> int:
        """Rounds that found no working location."""
        return self._failover.failed_rounds

    def client(self, base: str) -> OriginClient:
        """The single-origin client of ``base`` (one attempt per call)."""
        found = self._clients.get(base)
        if found is None:
            found = OriginClient(
                http=self._http,
                base=base,
                clock=self._clock,
                config=self._once,
                worker=self._worker,
                poll_timeout=self._poll_timeout,
            )
            self._clients[base] = found
        return found

    async def health(self) -> bool:
        """True if any of the origins this client was given answers its health check (readiness)."""
        for base in self.seeds_to_ask():
            if await self.client(base).health():
                return True
        return False

    # -- locations --

    def seeds_to_ask(self) -> list[str]:
        """Up to ``ASK`` of the members this client was given, at random: who is asked about a blob."""
        seeds = list(self._seeds)
        self._rng.shuffle(seeds)
        return seeds[: self.ASK]

    async def locations(self, digest: Digest) -> tuple[str, ...]:
        """Base URLs of the blob's origins, best first (cached ``locations_ttl`` seconds)."""
        return await self._locations.get(digest)

    def remember_locations(self, digest: Digest, bases: tuple[str, ...]) -> None:
        """Remember the blob's locations (base URLs, best first), learnt some other way, as ``locations`` does."""
        self._locations.put(digest, bases)

    async def any_member(self) -> str:
        """The base URL of a healthy member of the ring, at random (the best location of a random key, asked
        as ``locations`` asks, not cached): a member's own address, even when ``origins`` names a load
        balancer."""
        bases = await self._lookup(Digest(f"{self._rng.getrandbits(256):064x}"))
        if not bases:
            raise OSError("the origin cluster named no healthy member")
        return bases[0]

    async def _lookup(self, digest: Digest) -> tuple[str, ...]:
        def failed(seed: str, error: Exception, last: bool) -> None:
            log.debug(
                "asking {origin} for the locations of {digest} failed: {error}",
                origin=seed,
                digest=str(digest),
                error=str(error),
            )

        async def ask(seed: str) -> tuple[str, ...]:
            members = await self.client(seed).locations(digest)
            scheme = urlsplit(seed).scheme
            return tuple(f"{scheme}://{m}" for m in members)

        return await first_answer(self.seeds_to_ask(), ask, fails_over=_fails_over, on_fail=failed)

    # -- the API of OriginClient --

    async def _on_location(self, what: str, digest: Digest, call: Callable[[OriginClient], Awaitable[T]]) -> T:
        """``call`` on the blob's first location that answers (see the class)."""
        return await self._failover.call(what, digest, lambda base: call(self.client(base)), digest=str(digest))

    async def stat(self, namespace: str, digest: Digest) -> int | None:
        return await self._on_location(f"stat {digest}", digest, lambda c: c.stat(namespace, digest))

    async def stat_many(
        self,
        namespace: str,
        digests: Sequence[Digest],
        *,
        concurrency: int = 8,
        single: Callable[[str, Digest], Awaitable[int | None]] | None = None,
    ) -> dict[Digest, int | None]:
        """The size of each of ``digests`` (None: not stored), in a few
        questions instead of one each (``kraken.origin.batch``): at most
        ``concurrency`` requests in flight. ``single(namespace, digest)``
        answers what the batch questions cannot (default: ``stat``)."""
        return await stat_many(
            self, namespace, digests, concurrency=concurrency, single=self.stat if single is None else single
        )

    async def read_small(self, namespace: str, digest: Digest, limit: int) -> bytes | None:
        return await self._on_location(f"read {digest}", digest, lambda c: c.read_small(namespace, digest, limit))

    async def metainfo(self, namespace: str, digest: Digest) -> MetaInfo | None:
        return await self._on_location(f"metainfo {digest}", digest, lambda c: c.metainfo(namespace, digest))

    async def upload(self, namespace: str, digest: Digest, path: str, size: int) -> None:
        await self._on_location(f"upload {digest}", digest, lambda c: c.upload(namespace, digest, path, size))

    async def upload_from(
        self, namespace: str, digest: Digest, body: Callable[[], Awaitable[IBodyProducer]], *, rate: float | None = None
    ) -> None:
        """``OriginClient.upload_from`` on the blob's first location that takes it."""
        call = lambda c: c.upload_from(namespace, digest, body, rate=rate)  # noqa: E731
        await self._on_location(f"upload {digest}", digest, call)

    async def get(
        self, namespace: str, digest: Digest, *, method: str = "GET", headers: RawHeaders | None = None
    ) -> IResponse:
        """The first location's raw response below 500 (see ``OriginClient.get``)."""

        async def call(c: OriginClient) -> IResponse:
            response = await c.get(namespace, digest, method=method, headers=headers)
            if response.code >= 500:
                raise await c._unexpected(method, f"{c._base} {digest}", response)
            return response

        return await self._on_location(f"{method} {digest}", digest, call)

    async def peers(self, digest: Digest) -> list[PeerInfo]:
        """The P2P addresses of every location that seeds the blob (each
        location answers for itself). Locations that fail are left out; if
        all fail, the last error is raised."""
        bases = await self.locations(digest)
        answers = await gatherResults(
            [Deferred.fromCoroutine(self._peers_of(base, digest)) for base in bases], consumeErrors=True
        )
        found: dict[str, PeerInfo] = {}
        errors = []
        for answer in answers:
            if isinstance(answer, BaseException):
                errors.append(answer)
                continue
            for peer in answer:
                found.setdefault(str(peer.peer_id), peer)
        if errors and len(errors) == len(answers):
            self._locations.forget(digest)
            raise errors[-1]
        return list(found.values())

    async def _peers_of(self, base: str, digest: Digest) -> list[PeerInfo] | BaseException:
        try:
            return await self.client(base).peers(digest)
        except CancelledError:
            raise
        except Exception as e:
            log.debug("peers of {digest} from {origin} failed: {error}", digest=str(digest), origin=base, error=str(e))
            return e
