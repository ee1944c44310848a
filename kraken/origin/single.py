"""The client of one origin's blob server (``kraken.origin.http``): ``OriginClient``.

What one origin is asked (stat, reads, metainfo, peers, uploads, a blob's locations), with the origin's own
rules: 202 means "fetching it from the backend, ask again" (polled on the injected clock, ``_polling``), 409 on
an upload means "already held". The cluster of origins, with failover between a blob's locations, is
``kraken.origin.client.ClusterClient``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar
from urllib.parse import quote

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse

from kraken.core import Digest, MetaInfo
from kraken.core.peer import PeerError, PeerInfo
from kraken.net import HTTPStatusError, RetryPolicy
from kraken.net.body import ThreadedFileProducer
from kraken.net.service import name_path
from kraken.origin.batch import MAX_STAT_BATCH
from kraken.origin.staged import StagedUploads
from kraken.workers import Worker

T = TypeVar("T")
#: Request headers as treq takes them.
RawHeaders = dict[bytes, list[bytes]]
log = Logger()

# Polling an origin that answers 202 (it is fetching the blob from its
# backend), as Kraken's blob client: 1 s, growing 1.3x a time up to 5 s, for
# at most 15 minutes in all (a multi-GB blob from a slow backend).
POLL_FIRST = 1.0
POLL_FACTOR = 1.3
POLL_MAX = 5.0
POLL_TIMEOUT = 15 * 60.0
# An origin holds a question about a blob it is fetching (its ``fetch_hold``, 2 s by default) and answers as the
# fetch ends: a 202 that took this long has paced the client already, which asks again at once.
POLL_HELD = 1.0
_POLL = RetryPolicy(backoff=POLL_FIRST, factor=POLL_FACTOR, max_backoff=POLL_MAX)  # bounded by time, not tries


class _Pending:
    """An attempt's answer: 202, ask again later."""


PENDING = _Pending()


#: Marks an upload as one origin's copy to another member of the blob's placement (its value: k, 1-based).
REPLICA_HEADER = b"Kraken-Replica"
#: Asks an origin to answer from its own store only: no fetch on miss (one origin repairing from another).
LOCAL_HEADER = b"Kraken-Local"
#: On an origin's repair copy (``kraken.origin.repair``): the sender waits for no write-back of the blob (it is
#: written back already, or has no backend), so neither does the receiver.
REPAIR_HEADER = b"Kraken-Repair"
#: Asks an origin for a blob it is fetching, streamed as it arrives (200), or 204 at once when there is none to
#: stream (the blob is held: get it peer to peer). ``kraken.origin.http``; ``OriginClient.stream``.
STREAM_HEADER = b"Kraken-Stream"
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
class OriginClient(StagedUploads):
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

    async def _absent_or_pending(self, method: str, url: str, response: IResponse) -> _Pending | None:
        """An answer other than 200: 404 is None (absent), 202 ``PENDING``
        (both drained); any other raises ``HTTPStatusError``."""
        if response.code not in (404, 202):
            raise await self._unexpected(method, url, response)
        await self._drain(response)
        return None if response.code == 404 else PENDING

    async def _polling(self, what: str, method: str, url: str, attempt: Callable[[], Awaitable[T | _Pending]]) -> T:
        """``attempt`` (retried as ``_retrying`` does) until it returns
        something other than ``PENDING`` (the origin answered 202: it is
        fetching the blob from its backend). Waits grow from ``POLL_FIRST``
        by ``POLL_FACTOR`` up to ``POLL_MAX`` on the injected clock, except
        after a 202 that took ``POLL_HELD`` seconds or more (the origin held
        the question: it is asked again at once); after ``poll_timeout``
        seconds raises ``StillFetching``."""
        deadline = self._clock.seconds() + self._poll_timeout
        polls = 0
        while True:
            asked = self._clock.seconds()
            result = await self._retrying(what, attempt)
            if not isinstance(result, _Pending):
                return result
            if self._clock.seconds() - asked >= POLL_HELD:
                delay = 0.0
            else:
                delay, polls = _POLL.delay(polls), polls + 1
            if self._clock.seconds() + delay > deadline:
                raise StillFetching(method, url, 202, f"still fetching after {self._poll_timeout:.0f}s".encode())
            log.debug("{what}: the origin is fetching the blob; asking again in {delay:.2f}s", what=what, delay=delay)
            await deferLater(self._clock, delay, lambda: None)

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
            if response.code != 200:
                return await self._absent_or_pending("HEAD", url, response)
            await self._drain(response)
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
            if response.code != 200:
                return await self._absent_or_pending("GET", url, response)
            return await self._read(response, limit)

        return await self._polling(f"read {digest}", "GET", url, attempt)

    async def get(
        self, namespace: str, digest: Digest, *, method: str = "GET", headers: RawHeaders | None = None
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
            if response.code != 200:
                return await self._absent_or_pending("GET", url, response)
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

    async def upload(
        self, namespace: str, digest: Digest, path: str, size: int, *, replica: int = 0, repair: bool = False
    ) -> None:
        """Upload ``size`` bytes of ``path`` as blob ``digest``: start, one
        PATCH of the whole file, commit. A 409 at any step means the origin
        already holds the blob: success. Retries start again from the POST.

        ``replica`` k > 0 marks an origin's copy to the k-th other member of
        the blob's placement (header ``Kraken-Replica: k``): the receiver
        delays its write-back and does not replicate further. ``repair``:
        a repair copy whose write-back is nobody's job (``REPAIR_HEADER``)."""
        extra = {} if replica <= 0 else {REPLICA_HEADER: [str(replica).encode()]}
        if repair:
            extra[REPAIR_HEADER] = [b"1"]

        async def body() -> IBodyProducer:
            return ThreadedFileProducer(path, 0, size, self._worker)

        await self._retrying(f"upload {digest}", lambda: self._upload_once(namespace, digest, body, extra, None))

    async def upload_from(
        self, namespace: str, digest: Digest, body: Callable[[], Awaitable[IBodyProducer]], *, rate: float | None = None
    ) -> None:
        """Upload as blob ``digest`` what ``body()`` produces (a producer of known ``length``, made
        anew for each try once the origin started the upload), as ``upload`` does; ``rate``: the body
        comes no faster than this many bytes/s, which the request's timeout allows for."""
        await self._retrying(f"upload {digest}", lambda: self._upload_once(namespace, digest, body, {}, rate))

    async def _upload_once(
        self,
        namespace: str,
        digest: Digest,
        body: Callable[[], Awaitable[IBodyProducer]],
        extra: dict[bytes, list[bytes]],
        rate: float | None,
    ) -> None:
        url = self._uploads_url(namespace, digest)
        response = await self._request("POST", url, headers=extra)
        if response.code == 409:
            await self._drain(response)
            log.debug("origin already holds {digest}", digest=str(digest), namespace=namespace)
            return
        url = self._uploads_url(namespace, digest, await self._upload_id(url, response))

        producer = await body()
        size = int(producer.length)
        # The timeout runs until the response headers: sending the body (and,
        # for the PUT, the origin hashing it) must fit, so it grows with size.
        slow = self._slow_timeout(size) + (0.0 if rate is None else size / rate)
        response = await self._request(
            "PATCH", url, data=producer, headers={b"Content-Range": [f"0-{size}".encode()], **extra}, timeout=slow
        )
        if await self._held("PATCH", url, response):
            return
        response = await self._request("PUT", url, headers=extra, timeout=slow)
        if await self._committed(url, response):
            return
        log.info("uploaded {digest} ({bytes} bytes)", digest=str(digest), bytes=size, namespace=namespace)
