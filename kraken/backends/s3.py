"""S3 and S3-compatible stores (MinIO, moto, Ceph RGW) as a backend: ``S3Config`` and ``S3Backend``.

treq does the I/O (through ``kraken.net.service.ServiceClient``); botocore
only computes SigV4 headers (``kraken.backends.s3_signing``). Bodies of
files are streamed both ways. The XML is ``kraken.backends.s3_xml``, the
multipart upload ``kraken.backends.s3_multipart``.

- ``stat``: ``HEAD`` (404 -> ``BlobNotFound``).
- ``download``: ``HEAD`` for the size and ETag, then one ``GET`` for blobs
  up to ``download_part_size``, or ranged ``GET``s (``If-Match`` the ETag)
  of that size, ``download_concurrency`` at a time, each written at its
  offset. Bytes go to a temporary file beside the target, written in the
  worker, and the file is renamed over the target once complete.
- ``upload``: one ``PUT`` up to ``upload_part_size``; above it a multipart
  upload (parts streamed from the file by the worker,
  ``upload_concurrency`` at a time), aborted if any part fails.
- ``list``: ``ListObjectsV2`` with a prefix and continuation tokens.

Network errors and 5xx raise ``BackendUnavailable`` (after the retries of
``kraken.net.with_retries``); other unexpected statuses ``BackendError``.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import attrs
from botocore.credentials import Credentials
from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IResponse
from zope.interface import implementer

from kraken.backends.base import (
    DEFAULT_LIST_LIMIT,
    BackendError,
    BackendUnavailable,
    BlobInfo,
    BlobNotFound,
    IBackend,
    InvalidName,
    ListPage,
)
from kraken.backends.names import PATHERS, Pather, make_pather
from kraken.backends.remote import BodySink, Discard, RemoteBackend, create_temp
from kraken.backends.s3_multipart import upload_multipart
from kraken.backends.s3_signing import UNSIGNED_PAYLOAD, query, quote_key, sign
from kraken.backends.s3_xml import error_code, parse_list
from kraken.config import Size, positive
from kraken.files import remove_quietly
from kraken.net.body import ThreadedFileProducer
from kraken.net.bounded import bounded_map
from kraken.net.client import HTTPClientConfig, HTTPStatusError
from kraken.workers import Worker

T = TypeVar("T")
log = Logger()

MIN_PART_SIZE = 5 << 20  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 << 30
TEMP_PREFIX = ".kraken-s3-"


def _part_size(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not MIN_PART_SIZE <= value <= MAX_PART_SIZE:
        raise ValueError(f"{attribute.name} must be between 5MiB and 5GiB (S3's limits), not {value}")


def _list_max_keys(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= 1000:
        raise ValueError(f"list_max_keys must be between 1 and 1000, not {value}")


def _known_pather(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in PATHERS:
        raise ValueError(f"unknown name_path {value!r} (known: {', '.join(sorted(PATHERS))})")


def _no_trailing_slash(value: str) -> str:
    return value.rstrip("/")


@attrs.frozen
class S3Config:
    """One S3 backend (YAML: ``backends: [{namespace: ..., backend: {s3: {...}}}]``)."""

    bucket: str
    region: str = "us-east-1"
    # "" is AWS (https://s3.<region>.amazonaws.com); MinIO-like stores give their URL, e.g. http://minio:9000.
    endpoint: str = attrs.field(default="", converter=_no_trailing_slash)
    # Bucket in the path (http://host/bucket/key) rather than the host name (http://bucket.host/key).
    # None: path style for custom endpoints, virtual-hosted style for AWS.
    force_path_style: bool | None = None
    # Prefix of every object key, e.g. "kraken/"; the name pather lays out what follows.
    root_directory: str = ""
    name_path: str = attrs.field(default="identity", validator=_known_pather)
    # Empty access and secret keys send unsigned (anonymous) requests.
    access_key: str = ""
    secret_key: str = ""
    session_token: str = ""
    upload_part_size: Size = attrs.field(default=Size(64 << 20), validator=_part_size)
    upload_concurrency: int = attrs.field(default=10, validator=positive)
    download_part_size: Size = attrs.field(default=Size(64 << 20), validator=positive)
    download_concurrency: int = attrs.field(default=10, validator=positive)
    list_max_keys: int = attrs.field(default=250, validator=_list_max_keys)
    http_client: HTTPClientConfig = HTTPClientConfig()

    def __attrs_post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("bucket must not be empty")
        if bool(self.access_key) != bool(self.secret_key):
            raise ValueError("give both access_key and secret_key, or neither")
        if self.endpoint and urlsplit(self.endpoint).scheme not in ("http", "https"):
            raise ValueError(f"endpoint must be an http:// or https:// URL, not {self.endpoint!r}")

    @property
    def path_style(self) -> bool:
        if self.force_path_style is not None:
            return self.force_path_style
        return bool(self.endpoint)

    def bucket_url(self) -> str:
        """``http://host:port/bucket`` (path style) or ``https://bucket.host``."""
        endpoint = self.endpoint or f"https://s3.{self.region}.amazonaws.com"
        if self.path_style:
            return f"{endpoint}/{quote(self.bucket, safe='')}"
        parts = urlsplit(endpoint)
        return f"{parts.scheme}://{self.bucket}.{parts.netloc}{parts.path}"

    def credentials(self) -> Credentials | None:
        if not self.access_key:
            return None
        return Credentials(self.access_key, self.secret_key, self.session_token or None)


# --------------------------------------------------------------------------- the backend


@implementer(IBackend)
@attrs.frozen
class S3Backend(RemoteBackend):
    """``IBackend`` over one bucket. ``base`` is the bucket's URL
    (``S3Config.bucket_url()``); build it with ``S3Backend.create``."""

    _s3: S3Config
    _worker: Worker  # file I/O: reading parts, writing downloads
    pather: Pather

    def _error_code(self, body: bytes) -> str:
        return error_code(body)

    @classmethod
    def create(cls, config: S3Config, *, http: HTTPClient, clock: IReactorTime, worker: Worker) -> S3Backend:
        """The backend for ``config``, over ``http`` (from ``kraken.net.make_http_client``
        with ``config.http_client``; its pool is closed by the daemon)."""
        pather = make_pather(config.name_path, config.root_directory)
        return cls(http, config.bucket_url(), clock, config.http_client, s3=config, worker=worker, pather=pather)

    def _key(self, namespace: str, name: str) -> str:
        return self.pather.path(name)

    # -- plumbing --

    def _object_url(self, key: str, params: dict[str, str] | None = None) -> str:
        url = f"{self._base}/{quote_key(key)}"
        return f"{url}?{query(params)}" if params else url

    def _signed(
        self, method: str, url: str, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> dict[bytes, list[bytes]]:
        headers = dict(headers or {})
        if body is not None:
            headers["content-type"] = headers.get("content-type", "application/xml")
        return sign(method, url, credentials=self._s3.credentials(), region=self._s3.region, headers=headers, body=body)

    async def _send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        data: Any = None,
        timeout: float | None = None,
    ) -> IResponse:
        """One signed request (``body``: small bytes, signed; ``data``: a
        streamed body producer, sent as ``UNSIGNED-PAYLOAD``)."""
        headers = dict(headers or {})
        if data is not None:
            headers["x-amz-content-sha256"] = UNSIGNED_PAYLOAD
        signed = self._signed(method, url, headers, body)
        kwargs: dict[str, Any] = {"headers": signed}
        if body is not None:
            kwargs["data"] = body
        elif data is not None:
            kwargs["data"] = data
        if timeout is not None:
            kwargs["timeout"] = timeout
        return await self._request(method, url, **kwargs)

    # -- stat --

    async def _head(self, namespace: str, name: str) -> tuple[int, str | None]:
        key = self._key(namespace, name)
        url = self._object_url(key)

        async def attempt() -> tuple[int, str | None]:
            response = await self._send("HEAD", url)
            await self._drain(response)
            if response.code == 404:
                raise BlobNotFound(namespace, name)
            if response.code != 200:
                raise HTTPStatusError("HEAD", url, response.code)
            lengths = response.headers.getRawHeaders(b"content-length")
            if not lengths or not lengths[0].strip().isdigit():
                raise BackendError(f"HEAD {key}: no usable Content-Length")
            etags = response.headers.getRawHeaders(b"etag")
            return int(lengths[0]), etags[0].decode("latin-1") if etags else None

        return await self._op(f"stat {key}", attempt)

    async def stat(self, namespace: str, name: str) -> BlobInfo:
        size, _ = await self._head(namespace, name)
        return BlobInfo(size=size)

    # -- download --

    async def download(self, namespace: str, name: str, path: str) -> None:
        key = self._key(namespace, name)
        size, etag = await self._head(namespace, name)
        temp = await self._worker.run(create_temp, path, TEMP_PREFIX)
        try:
            part = self._s3.download_part_size
            if size <= part:
                await self._get_range(namespace, name, key, temp, 0, size, etag, whole=True)
            else:
                ranges = [(offset, min(part, size - offset)) for offset in range(0, size, part)]

                async def fetch(r: tuple[int, int]) -> None:
                    await self._get_range(namespace, name, key, temp, r[0], r[1], etag, whole=False)

                await bounded_map(ranges, self._s3.download_concurrency, fetch)
            await self._worker.run(os.replace, temp, path)
        except BaseException:
            await self._worker.run(remove_quietly, temp)
            raise
        log.debug("downloaded {key} ({bytes} bytes)", key=key, bytes=size, namespace=namespace)

    async def _get_range(
        self, namespace: str, name: str, key: str, temp: str, offset: int, length: int, etag: str | None, whole: bool
    ) -> None:
        url = self._object_url(key)
        headers = {}
        if not whole:
            headers["range"] = f"bytes={offset}-{offset + length - 1}"
        if etag is not None:
            headers["if-match"] = etag

        async def attempt() -> None:
            response = await self._send("GET", url, headers=headers)
            if response.code == 404:
                await self._drain(response)
                raise BlobNotFound(namespace, name)
            if response.code == 412:
                await self._drain(response)
                raise BackendUnavailable(f"GET {key}: the object changed during the download")
            if response.code != (200 if whole else 206):
                raise await self._unexpected("GET", url, response)
            try:
                fd = await self._worker.run(os.open, temp, os.O_WRONLY)
            except BaseException:
                response.deliverBody(Discard())
                raise
            sink = BodySink(fd, offset, length, self._worker, self._clock, self._config.timeout)
            response.deliverBody(sink)
            await sink.done

        await self._op(f"get {key}", attempt)

    # -- upload --

    async def upload(self, namespace: str, name: str, path: str) -> None:
        key = self._key(namespace, name)
        size = await self._worker.run(os.path.getsize, path)
        if size <= self._s3.upload_part_size:
            await self._put(key, path, size)
        else:
            await upload_multipart(self, key, path, size, self._s3.upload_part_size, self._s3.upload_concurrency)
        log.debug("uploaded {key} ({bytes} bytes)", key=key, bytes=size, namespace=namespace)

    async def _put(self, key: str, path: str, size: int) -> None:
        url = self._object_url(key)

        async def attempt() -> None:
            body = ThreadedFileProducer(path, 0, size, self._worker)
            response = await self._send(
                "PUT",
                url,
                headers={"content-type": "application/octet-stream"},
                data=body,
                timeout=self._slow_timeout(size),
            )
            if response.code != 200:
                raise await self._unexpected("PUT", url, response)
            await self._drain(response)

        await self._op(f"put {key}", attempt)

    # -- list --

    async def _list_keys(self, key_prefix: str, token: str | None, max_keys: int) -> tuple[list[str], str | None]:
        params = {"list-type": "2", "prefix": key_prefix, "max-keys": str(max_keys)}
        if token is not None:
            params["continuation-token"] = token
        url = f"{self._base}?{query(params)}" if self._s3.path_style else f"{self._base}/?{query(params)}"

        async def attempt() -> tuple[list[str], str | None]:
            response = await self._send("GET", url)
            body = await self._read(response)
            if response.code != 200:
                raise HTTPStatusError("GET", url, response.code, body)
            return parse_list(body)

        return await self._op(f"list {key_prefix!r}", attempt)

    async def list(
        self, prefix: str = "", *, continuation: str | None = None, limit: int = DEFAULT_LIST_LIMIT
    ) -> ListPage:
        """Up to ``limit`` names, from ``ListObjectsV2`` requests of at most
        ``list_max_keys`` keys each; ``continuation`` is S3's own token."""
        key_prefix = self.pather.list_prefix(prefix)
        limit = max(1, limit)
        names: list[str] = []
        token = continuation
        while True:
            keys, token = await self._list_keys(key_prefix, token, min(limit - len(names), self._s3.list_max_keys))
            for key in keys:
                try:
                    name = self.pather.name(key)
                except InvalidName:
                    continue  # not a name of this layout (distribution's other files, say)
                if name.startswith(prefix):
                    names.append(name)
            if token is None or len(names) >= limit:
                return ListPage(tuple(sorted(names)), token)
