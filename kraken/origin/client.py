"""The treq client of the origin's blob server (``kraken.origin.http``)."""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from kraken.core import Digest, MetaInfo
from kraken.core.peer import PeerError, PeerInfo
from kraken.net import HTTPClientConfig, HTTPStatusError
from kraken.net.body import ThreadedFileProducer
from kraken.net.retry import NETWORK_ERRORS
from kraken.net.service import ServiceClient, name_path
from kraken.origin.batch import MAX_STAT_BATCH, stat_many
from kraken.workers import Worker

T = TypeVar("T")
_ERROR_BODY = 64 << 10
log = Logger()

# Polling an origin that answers 202 (it is fetching the blob from its
# backend), as Kraken's blob client: 1 s, growing 1.3x a time up to 5 s, for
# at most 15 minutes in all (a multi-GB blob from a slow backend).
POLL_FIRST = 1.0
POLL_FACTOR = 1.3
POLL_MAX = 5.0
POLL_TIMEOUT = 15 * 60.0


class _Pending:
    """An attempt's answer: 202, ask again later."""


PENDING = _Pending()


#: Marks an upload as one origin's copy to another member of the blob's placement (its value: k, 1-based).
REPLICA_HEADER = b"Kraken-Replica"
#: Asks an origin to answer from its own store only: no fetch on miss (one origin repairing from another).
LOCAL_HEADER = b"Kraken-Local"
#: The answer of ``GET /blobs/<digest>/locations``: the blob's origins, "host:port" comma-separated, best first.
LOCATIONS_HEADER = b"Origin-Locations"


@attrs.frozen
class StatAnswer:
    """An origin's answer to ``POST /blobs/stat``: the sizes of the blobs its
    store holds, the ring's locations ("host:port", best first) of the
    others, and whether it could fetch a blob it lacks (from a backend or a
    replica), so that its "not held" is not final."""

    held: dict[Digest, int]
    locations: dict[Digest, tuple[str, ...]]
    may_fetch: bool


class StillFetching(HTTPStatusError):
    """The origin still answered 202 when the polling's time was up."""


@attrs.frozen
class OriginClient(ServiceClient):
    """Talks to one origin. ``base`` is like ``http://127.0.0.1:15002``.

    Unexpected statuses raise ``HTTPStatusError``; idempotent calls and uploads
    are retried on network errors and 429/502/503/504 (``kraken.net.with_retries``).
    """

    _worker: Worker  # reads the files being uploaded
    # How long stat, read_small, get, metainfo and peers poll an origin answering 202.
    _poll_timeout: float = POLL_TIMEOUT

    # -- URLs --

    def _blob_url(self, namespace: str, digest: Digest) -> str:
        return f"{self._base}/namespace/{name_path(namespace)}/blobs/{digest}"

    def _uploads_url(self, namespace: str, digest: Digest, uid: str | None = None) -> str:
        url = f"{self._blob_url(namespace, digest)}/uploads"
        return url if uid is None else f"{url}/{quote(uid, safe='')}"

    # -- plumbing --

    async def _drain(self, response: IResponse) -> None:
        """Consume a small body so the connection can go back to the pool."""
        await self._read(response, _ERROR_BODY)

    async def _unexpected(self, method: str, url: str, response: IResponse) -> HTTPStatusError:
        try:
            body = await self._read(response, _ERROR_BODY)
        except Exception:
            body = b""
        return HTTPStatusError(method, url, response.code, body)

    async def _polling(self, what: str, method: str, url: str, attempt: Callable[[], Awaitable[T | _Pending]]) -> T:
        """``attempt`` (retried as ``_retrying`` does) until it returns
        something other than ``PENDING`` (the origin answered 202: it is
        fetching the blob from its backend). Waits grow from ``POLL_FIRST``
        by ``POLL_FACTOR`` up to ``POLL_MAX`` on the injected clock; after
        ``poll_timeout`` seconds raises ``StillFetching``."""
        deadline = self._clock.seconds() + self._poll_timeout
        delay = POLL_FIRST
        while True:
            result = await self._retrying(what, attempt)
            if not isinstance(result, _Pending):
                return result
            if self._clock.seconds() + delay > deadline:
                raise StillFetching(method, url, 202, f"still fetching after {self._poll_timeout:.0f}s".encode())
            log.debug("{what}: the origin is fetching the blob; asking again in {delay:.2f}s", what=what, delay=delay)
            await deferLater(self._clock, delay, lambda: None)
            delay = min(POLL_MAX, delay * POLL_FACTOR)

    # -- the API --

    async def locations(self, digest: Digest) -> list[str]:
        """The blob's origins as this origin sees the ring ("host:port", best
        first). One attempt: ``ClusterClient`` asks another origin instead."""
        url = f"{self._base}/blobs/{digest}/locations"
        response = await self._request("GET", url)
        await self._drain(response)
        if response.code != 200:
            raise HTTPStatusError("GET", url, response.code)
        found = [
            m.strip()
            for value in response.headers.getRawHeaders(LOCATIONS_HEADER) or []
            for m in value.decode("ascii", "replace").split(",")
            if m.strip()
        ]
        if not found:
            raise HTTPStatusError("GET", url, response.code, b"no Origin-Locations header")
        return found

    async def health(self) -> bool:
        """True if the origin answers ``GET /health`` with 200."""
        url = f"{self._base}/health"
        try:
            response = await self._request("GET", url)
            await self._drain(response)
        except CancelledError:
            raise
        except Exception as e:
            log.debug("health check of {url} failed: {error}", url=url, error=str(e))
            return False
        return bool(response.code == 200)

    async def stat(self, namespace: str, digest: Digest, *, local: bool = False) -> int | None:
        """The blob's size, or None if the origin does not hold it (nor can
        fetch it; with ``local``, if its store does not hold it)."""
        url = self._blob_url(namespace, digest)
        headers = {LOCAL_HEADER: [b"1"]} if local else None

        async def attempt() -> int | _Pending | None:
            response = await self._request("HEAD", url, headers=headers)
            await self._drain(response)
            if response.code == 404:
                return None
            if response.code == 202:
                return PENDING
            if response.code != 200:
                raise await self._unexpected("HEAD", url, response)
            lengths = response.headers.getRawHeaders(b"content-length")
            if not lengths or not lengths[0].strip().isdigit():
                raise HTTPStatusError("HEAD", url, response.code, b"no usable Content-Length")
            return int(lengths[0])

        return await self._polling(f"stat {digest}", "HEAD", url, attempt)

    async def stat_batch(self, digests: Sequence[Digest]) -> StatAnswer:
        """One ``POST /blobs/stat`` about at most ``MAX_STAT_BATCH`` digests
        (one attempt; ``ClusterClient.stat_many`` falls back to a HEAD each).
        A malformed answer raises ``HTTPStatusError``."""
        if len(digests) > MAX_STAT_BATCH:
            raise ValueError(f"at most {MAX_STAT_BATCH} digests at once")
        url = f"{self._base}/blobs/stat"
        body = json.dumps({"digests": [str(d) for d in digests]}).encode()
        _, raw = await self._call(
            "POST", url, frozenset({200}), data=body, headers={b"Content-Type": [b"application/json"]}
        )
        try:
            doc = json.loads(raw)
            held = {Digest.parse(k): int(v) for k, v in doc["held"].items()}
            locations = {Digest.parse(k): tuple(str(m) for m in v) for k, v in doc["locations"].items()}
            may_fetch = doc["may_fetch"]
            if not isinstance(may_fetch, bool):
                raise ValueError("may_fetch is not a boolean")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise HTTPStatusError("POST", url, 200, f"bad stat answer: {e}".encode()) from None
        return StatAnswer(held, locations, may_fetch)

    async def read_small(self, namespace: str, digest: Digest, limit: int) -> bytes | None:
        """The whole blob (a manifest, say) if it holds at most ``limit`` bytes;
        None if absent. A bigger blob raises ``kraken.net.ResponseTooLarge``."""
        url = self._blob_url(namespace, digest)

        async def attempt() -> bytes | _Pending | None:
            response = await self._request("GET", url)
            if response.code == 404:
                await self._drain(response)
                return None
            if response.code == 202:
                await self._drain(response)
                return PENDING
            if response.code != 200:
                raise await self._unexpected("GET", url, response)
            return await self._read(response, limit)

        return await self._polling(f"read {digest}", "GET", url, attempt)

    async def get(
        self,
        namespace: str,
        digest: Digest,
        *,
        method: str = "GET",
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> IResponse:
        """The raw response, body unread, whatever its status (the caller
        streams it and handles 404, 206, 416...) except 202, which is polled
        until the origin has fetched the blob. Only network errors are retried."""
        url = self._blob_url(namespace, digest)
        hdrs = Headers(headers or {})

        async def attempt() -> IResponse | _Pending:
            response = await self._request(method, url, headers=hdrs)
            if response.code == 202:
                await self._drain(response)
                return PENDING
            return response

        return await self._polling(f"{method} {digest}", method, url, attempt)

    async def metainfo(self, namespace: str, digest: Digest) -> MetaInfo | None:
        url = f"{self._blob_url(namespace, digest)}/metainfo"

        async def attempt() -> MetaInfo | _Pending | None:
            response = await self._request("GET", url)
            if response.code == 404:
                await self._drain(response)
                return None
            if response.code == 202:
                await self._drain(response)
                return PENDING
            if response.code != 200:
                raise await self._unexpected("GET", url, response)
            return MetaInfo.from_json(await self._read(response, self._config.max_body))

        info = await self._polling(f"metainfo {digest}", "GET", url, attempt)
        if info is not None and info.digest != digest:
            raise HTTPStatusError("GET", url, 200, f"metainfo is for {info.digest}".encode())
        return info

    async def peers(self, digest: Digest) -> list[PeerInfo]:
        """The origins' P2P addresses that seed the blob (``GET /blobs/<digest>/peers``);
        empty if none holds it (polled while it answers 202: it is fetching
        the blob). A malformed answer raises ``HTTPStatusError``."""
        url = f"{self._base}/blobs/{digest}/peers"

        async def attempt() -> bytes | _Pending:
            code, body = await self._call("GET", url, frozenset({200, 202}))
            return PENDING if code == 202 else body

        body = await self._polling(f"peers {digest}", "GET", url, attempt)
        try:
            doc = json.loads(body)
            if not isinstance(doc, dict) or not isinstance(doc.get("peers"), list):
                raise ValueError('not {"peers": [...]}')
            return [PeerInfo.from_json(p) for p in doc["peers"]]
        except (ValueError, PeerError) as e:
            raise HTTPStatusError("GET", url, 200, f"bad peers answer: {e}".encode()) from None

    async def upload(self, namespace: str, digest: Digest, path: str, size: int, *, replica: int = 0) -> None:
        """Upload ``size`` bytes of ``path`` as blob ``digest``: start, one
        PATCH of the whole file, commit. A 409 at any step means the origin
        already holds the blob: success. Retries start again from the POST.

        ``replica`` k > 0 marks an origin's copy to the k-th other member of
        the blob's placement (header ``Kraken-Replica: k``): the receiver
        delays its write-back and does not replicate further."""
        extra = {} if replica <= 0 else {REPLICA_HEADER: [str(replica).encode()]}
        await self._retrying(f"upload {digest}", lambda: self._upload_once(namespace, digest, path, size, extra))

    async def _upload_once(
        self, namespace: str, digest: Digest, path: str, size: int, extra: dict[bytes, list[bytes]]
    ) -> None:
        url = self._uploads_url(namespace, digest)
        response = await self._request("POST", url, headers=extra)
        if response.code == 409:
            await self._drain(response)
            log.debug("origin already holds {digest}", digest=str(digest), namespace=namespace)
            return
        if response.code != 200:
            raise await self._unexpected("POST", url, response)
        await self._drain(response)
        locations = response.headers.getRawHeaders(b"location")
        if not locations:
            raise HTTPStatusError("POST", url, response.code, b"no Location header")
        url = self._uploads_url(namespace, digest, locations[0].decode("ascii").strip())

        body = ThreadedFileProducer(path, 0, size, self._worker)
        # The timeout runs until the response headers: sending the body (and,
        # for the PUT, the origin hashing it) must fit, so it grows with size.
        slow = self._config.timeout + size / self._config.min_transfer_rate
        response = await self._request(
            "PATCH", url, data=body, headers={b"Content-Range": [f"0-{size}".encode()], **extra}, timeout=slow
        )
        if response.code == 409:
            await self._drain(response)
            return
        if not 200 <= response.code < 300:
            raise await self._unexpected("PATCH", url, response)
        await self._drain(response)

        response = await self._request("PUT", url, headers=extra, timeout=slow)
        if response.code == 409:
            await self._drain(response)
            return
        if not 200 <= response.code < 300:
            raise await self._unexpected("PUT", url, response)
        await self._drain(response)
        log.info("uploaded {digest} ({bytes} bytes)", digest=str(digest), bytes=size, namespace=namespace)


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
    if isinstance(error, HTTPStatusError):
        return error.code >= 500 or error.code == 429
    return isinstance(error, NETWORK_ERRORS)


def _transient(error: BaseException) -> bool:
    """A failure that another try soon may not meet: the network, or a gateway's 429/502/504."""
    if isinstance(error, HTTPStatusError):
        return error.code in (429, 502, 504)
    return isinstance(error, NETWORK_ERRORS)


class ClusterClient:
    """Talks to the origin cluster, as the proxy, tracker and build-index do.

    ``origins`` are the base URLs of some members (one is enough: it knows
    the ring). For each blob the client asks up to ``ASK`` of them, at random,
    for the blob's locations (``GET /blobs/<digest>/locations``: the healthy
    members of its placement, best first), remembers the answer for
    ``locations_ttl`` seconds, and goes to the first location; a network
    error, 429 or any 5xx there moves on to the next (each location gets one
    attempt). When every location failed and one of them could not be
    reached (or answered 429, 502, 504), the locations are asked again and
    the round repeats after a backoff, as ``http_client.retries`` and
    ``backoff`` say; when all answered 500 or 503, the error is raised at
    once. A 404 or another answer below 500 ends the search:
    every location of a blob holds it, or can fetch it from the backend.

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
        self._config = config
        self._worker = worker
        self._ttl = locations_ttl
        self._cache_size = locations_cache
        self._rng = rng or random.Random()
        self._poll_timeout = poll_timeout
        self._once = attrs.evolve(config, retries=0)  # this client fails over instead
        self._clients: dict[str, OriginClient] = {}
        self._locations: dict[Digest, tuple[float, tuple[str, ...]]] = {}
        #: Calls that went on to the next location, and rounds that found no working one.
        self.failovers = 0
        self.failed_rounds = 0
        #: ``stat_many``'s batch questions (``POST /blobs/stat``) and the single stats it fell back to.
        self.batch_stats = 0
        self.single_stats = 0

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

    # -- locations --

    async def locations(self, digest: Digest) -> tuple[str, ...]:
        """Base URLs of the blob's origins, best first (cached ``locations_ttl`` seconds)."""
        now = self._clock.seconds()
        cached = self._locations.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        seeds = list(self._seeds)
        self._rng.shuffle(seeds)
        error: BaseException | None = None
        for seed in seeds[: self.ASK]:
            try:
                members = await self.client(seed).locations(digest)
            except CancelledError:
                raise
            except Exception as e:
                if not _fails_over(e):
                    raise
                log.debug(
                    "asking {origin} for the locations of {digest} failed: {error}",
                    origin=seed,
                    digest=str(digest),
                    error=str(e),
                )
                error = e
                continue
            scheme = urlsplit(seed).scheme
            found = tuple(f"{scheme}://{m}" for m in members)
            self._remember(digest, found)
            return found
        assert error is not None
        raise error

    def _remember(self, digest: Digest, found: tuple[str, ...]) -> None:
        self._locations.pop(digest, None)
        self._locations[digest] = (self._clock.seconds() + self._ttl, found)
        while len(self._locations) > self._cache_size:
            del self._locations[next(iter(self._locations))]

    async def _failover(self, what: str, digest: Digest, call: Callable[[OriginClient], Awaitable[T]]) -> T:
        """``call`` on the blob's first location that answers (see the class)."""
        delays = [min(self._config.max_backoff, self._config.backoff * 2**i) for i in range(self._config.retries)]
        while True:
            error: BaseException | None = None
            transient = False  # an origin unreachable or restarting: worth another round
            try:
                bases = await self.locations(digest)
            except CancelledError:
                raise
            except Exception as e:
                if not _fails_over(e):
                    raise
                bases, error, transient = (), e, True
            for i, base in enumerate(bases):
                try:
                    return await call(self.client(base))
                except CancelledError:
                    raise
                except Exception as e:
                    if not _fails_over(e):
                        raise
                    error = e
                    transient = transient or _transient(e)
                    # Ask for the locations again next time: the ring may be leaving this one out by then.
                    self._locations.pop(digest, None)
                    if i + 1 < len(bases):
                        self.failovers += 1
                        log.warn(
                            "{what} on {origin} failed ({error}); trying the next location",
                            what=what,
                            origin=base,
                            error=str(e),
                            digest=str(digest),
                        )
            self.failed_rounds += 1
            self._locations.pop(digest, None)  # ask again: the ring may have moved
            assert error is not None
            if not delays or not transient:
                raise error  # every location answered (500, 503: its backend is down): asking again now won't help
            delay = delays.pop(0)
            log.warn(
                "{what}: no origin answered ({error}); trying again in {delay:.2f}s",
                what=what,
                error=str(error),
                delay=delay,
                digest=str(digest),
            )
            await deferLater(self._clock, delay, lambda: None)

    # -- the API of OriginClient --

    async def stat(self, namespace: str, digest: Digest) -> int | None:
        return await self._failover(f"stat {digest}", digest, lambda c: c.stat(namespace, digest))

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
        return await self._failover(f"read {digest}", digest, lambda c: c.read_small(namespace, digest, limit))

    async def metainfo(self, namespace: str, digest: Digest) -> MetaInfo | None:
        return await self._failover(f"metainfo {digest}", digest, lambda c: c.metainfo(namespace, digest))

    async def upload(self, namespace: str, digest: Digest, path: str, size: int) -> None:
        await self._failover(f"upload {digest}", digest, lambda c: c.upload(namespace, digest, path, size))

    async def get(
        self,
        namespace: str,
        digest: Digest,
        *,
        method: str = "GET",
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> IResponse:
        """The first location's raw response below 500 (see ``OriginClient.get``)."""

        async def call(c: OriginClient) -> IResponse:
            response = await c.get(namespace, digest, method=method, headers=headers)
            if response.code >= 500:
                raise await c._unexpected(method, f"{c._base} {digest}", response)
            return response

        return await self._failover(f"{method} {digest}", digest, call)

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
            self._locations.pop(digest, None)
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
