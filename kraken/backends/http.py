"""A read-only backend that fetches blobs from plain HTTP URLs (Kraken's ``http`` backend).

``download_url`` is a template with ``{digest}`` (``<algorithm>:<hex>``) and/or
``{hex}`` (the hex alone) placeholders, for example
``https://blobs.example.com/sha256/{hex}``.

- ``stat``: ``HEAD`` the URL; the size is its ``Content-Length`` (404 ->
  ``BlobNotFound``). Kraken's Go backend answers size 0 here; the size is
  what the bandwidth limits and callers need, so this one asks.
- ``download``: ``GET`` the URL and stream the body to a temporary file
  beside the target, written by the worker; renamed over the target once
  complete (``kraken.backends.remote.stream_to_file``).
- ``upload`` and ``list`` raise ``BackendError`` ("read-only").

Network errors, 429 and 5xx raise ``BackendUnavailable`` (after the retries
of ``kraken.net.with_retries``); other unexpected statuses ``BackendError``.
"""

from __future__ import annotations

from typing import TypeVar
from urllib.parse import urlsplit

import attrs
from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IResponse
from zope.interface import implementer

from kraken.backends.base import (
    DEFAULT_LIST_LIMIT,
    BackendError,
    BlobInfo,
    BlobNotFound,
    IBackend,
    ListPage,
)
from kraken.backends.names import blob_digest, blob_hex
from kraken.backends.remote import RemoteBackend, stream_to_file
from kraken.net.client import HTTPClientConfig, HTTPStatusError
from kraken.workers import Worker

T = TypeVar("T")
log = Logger()

TEMP_PREFIX = ".kraken-http-"
PLACEHOLDERS = ("{digest}", "{hex}")


# --------------------------------------------------------------------------- errors


def read_only(kind: str, operation: str) -> BackendError:
    return BackendError(f"the {kind} backend is read-only: {operation} is not supported")


def content_length(response: IResponse, what: str) -> int:
    lengths = response.headers.getRawHeaders(b"content-length")
    if not lengths or not lengths[0].strip().isdigit():
        raise BackendError(f"{what}: no usable Content-Length")
    return int(lengths[0])


# --------------------------------------------------------------------------- the backend


def _check_template(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if urlsplit(value).scheme not in ("http", "https"):
        raise ValueError(f"{attribute.name} must be an http:// or https:// URL, not {value!r}")
    if not any(p in value for p in PLACEHOLDERS):
        raise ValueError(f"{attribute.name} must contain {{digest}} or {{hex}}: {value!r}")


@attrs.frozen
class HTTPBackendConfig:
    """YAML: ``backends: [{namespace: ..., http: {download_url: "https://host/blobs/{digest}"}}]``."""

    # {digest} is replaced by <algorithm>:<hex>, {hex} by the hex alone.
    download_url: str = attrs.field(validator=_check_template)
    http_client: HTTPClientConfig = HTTPClientConfig()

    def url(self, name: str) -> str:
        """The URL of the blob ``name`` (``<algorithm>:<hex>`` or ``<hex>``). Raises ``InvalidName``."""
        hex_ = blob_hex(name)
        return self.download_url.replace("{digest}", str(blob_digest(name))).replace("{hex}", hex_)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@implementer(IBackend)
@attrs.frozen
class HTTPBackend(RemoteBackend):
    """``IBackend`` over ``download_url``, read-only. Build it with ``HTTPBackend.create``."""

    _settings: HTTPBackendConfig
    _worker: Worker

    @classmethod
    def create(cls, config: HTTPBackendConfig, *, http: HTTPClient, clock: IReactorTime, worker: Worker) -> HTTPBackend:
        return cls(http, _origin(config.download_url), clock, config.http_client, settings=config, worker=worker)

    async def stat(self, namespace: str, name: str) -> BlobInfo:
        url = self._settings.url(name)

        async def attempt() -> BlobInfo:
            response = await self._request("HEAD", url)
            await self._drain(response)
            if response.code == 404:
                raise BlobNotFound(namespace, name)
            if response.code != 200:
                raise HTTPStatusError("HEAD", url, response.code)
            return BlobInfo(size=content_length(response, f"HEAD {url}"))

        return await self._op(f"stat {url}", attempt)

    async def download(self, namespace: str, name: str, path: str) -> None:
        url = self._settings.url(name)

        async def attempt() -> int:
            response = await self._request("GET", url)
            if response.code == 404:
                await self._drain(response)
                raise BlobNotFound(namespace, name)
            if response.code != 200:
                raise await self._unexpected("GET", url, response)
            return await stream_to_file(
                response, path, worker=self._worker, clock=self._clock, timeout=self._config.timeout, prefix=TEMP_PREFIX
            )

        size = await self._op(f"get {url}", attempt)
        log.debug("downloaded {url} ({bytes} bytes)", url=url, bytes=size, namespace=namespace)

    async def upload(self, namespace: str, name: str, path: str) -> None:
        raise read_only("http", "upload")

    async def list(
        self, prefix: str = "", *, continuation: str | None = None, limit: int = DEFAULT_LIST_LIMIT
    ) -> ListPage:
        raise read_only("http", "list")
