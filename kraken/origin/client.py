"""The treq client of the origin's blob server (``kraken.origin.http``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import quote

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from kraken.core import Digest, MetaInfo
from kraken.core.peer import PeerError, PeerInfo
from kraken.net import HTTPStatusError
from kraken.net.body import ThreadedFileProducer
from kraken.net.service import ServiceClient, name_path
from kraken.store.workers import Worker

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

    async def stat(self, namespace: str, digest: Digest) -> int | None:
        """The blob's size, or None if the origin does not hold it (nor can fetch it)."""
        url = self._blob_url(namespace, digest)

        async def attempt() -> int | _Pending | None:
            response = await self._request("HEAD", url)
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

    async def upload(self, namespace: str, digest: Digest, path: str, size: int) -> None:
        """Upload ``size`` bytes of ``path`` as blob ``digest``: start, one
        PATCH of the whole file, commit. A 409 at any step means the origin
        already holds the blob: success. Retries start again from the POST."""
        await self._retrying(f"upload {digest}", lambda: self._upload_once(namespace, digest, path, size))

    async def _upload_once(self, namespace: str, digest: Digest, path: str, size: int) -> None:
        url = self._uploads_url(namespace, digest)
        response = await self._request("POST", url)
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
            "PATCH", url, data=body, headers={b"Content-Range": [f"0-{size}".encode()]}, timeout=slow
        )
        if response.code == 409:
            await self._drain(response)
            return
        if not 200 <= response.code < 300:
            raise await self._unexpected("PATCH", url, response)
        await self._drain(response)

        response = await self._request("PUT", url, timeout=slow)
        if response.code == 409:
            await self._drain(response)
            return
        if not 200 <= response.code < 300:
            raise await self._unexpected("PUT", url, response)
        await self._drain(response)
        log.info("uploaded {digest} ({bytes} bytes)", digest=str(digest), bytes=size, namespace=namespace)
