"""A read-only backend that fetches blobs from plain HTTP URLs (Kraken's ``http`` backend).

``download_url`` is a template with ``{digest}`` (``sha256:<hex>``) and/or
``{hex}`` (the 64 hex characters) placeholders, for example
``https://blobs.example.com/sha256/{hex}``.

- ``stat``: ``HEAD`` the URL; the size is its ``Content-Length`` (404 ->
  ``BlobNotFound``). Kraken's Go backend answers size 0 here; the size is
  what the bandwidth limits and callers need, so this one asks.
- ``download``: ``GET`` the URL and stream the body to a temporary file
  beside the target, written by the worker; renamed over the target once
  complete (``stream_to_file``, shared with the registry backend).
- ``upload`` and ``list`` raise ``BackendError`` ("read-only").

Network errors, 429 and 5xx raise ``BackendUnavailable`` (after the retries
of ``kraken.net.with_retries``); other unexpected statuses ``BackendError``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import TimeoutError
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from kraken.backends.base import (
    DEFAULT_LIST_LIMIT,
    BackendError,
    BackendUnavailable,
    BlobInfo,
    BlobNotFound,
    IBackend,
    ListPage,
)
from kraken.backends.names import blob_hex
from kraken.net.client import HTTPClientConfig, HTTPStatusError
from kraken.net.retry import NETWORK_ERRORS
from kraken.net.service import ServiceClient
from kraken.store.workers import Worker

T = TypeVar("T")
log = Logger()

TEMP_PREFIX = ".kraken-http-"
ERROR_BODY = 64 << 10
# The response stops reading from its connection while this much waits for the disk.
HIGH_WATER = 4 << 20
LOW_WATER = 1 << 20
PLACEHOLDERS = ("{digest}", "{hex}")


# --------------------------------------------------------------------------- errors


def translate(e: Exception, what: str) -> Exception:
    """The ``BackendError`` for an exception out of a request: network
    errors, 429 and 5xx are ``BackendUnavailable``; other statuses ``BackendError``."""
    if isinstance(e, BackendError):
        return e
    if isinstance(e, HTTPStatusError):
        detail = f"{what}: HTTP {e.code}"
        if e.code >= 500 or e.code == 429:
            return BackendUnavailable(detail)
        return BackendError(detail)
    if isinstance(e, NETWORK_ERRORS):
        return BackendUnavailable(f"{what}: {e.__class__.__name__}: {e}")
    return e


def read_only(kind: str, operation: str) -> BackendError:
    return BackendError(f"the {kind} backend is read-only: {operation} is not supported")


def content_length(response: IResponse, what: str) -> int:
    lengths = response.headers.getRawHeaders(b"content-length")
    if not lengths or not lengths[0].strip().isdigit():
        raise BackendError(f"{what}: no usable Content-Length")
    return int(lengths[0])


# --------------------------------------------------------------------------- streaming a body to a file


class _FileSink(Protocol):
    """Receives one response body and appends it to the file ``fd`` (which it
    owns and closes) in the worker, one batch at a time, pausing the
    connection while more than ``HIGH_WATER`` bytes wait for the disk.
    ``done`` fires with the byte count once the body is on disk and ``fd``
    is closed; it fails on a body whose length is not ``expected`` (when
    known), a write error, or ``timeout`` seconds without data. Cancelling
    ``done`` drops the connection; ``fd`` is still closed after the last write."""

    def __init__(self, fd: int, expected: int | None, worker: Worker, clock: IReactorTime, timeout: float) -> None:
        self._fd = fd
        self._expected = expected
        self._worker = worker
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._received = 0
        self._busy = False
        self._paused = False
        self._ended = False
        self._closed = False
        self._error: BaseException | None = None
        self.done: Deferred[int] = Deferred(lambda d: self._abort(CancelledError()))
        self._timeout = timeout
        self._timer: IDelayedCall | None = clock.callLater(timeout, self._timed_out)

    def makeConnection(self, transport: Any) -> None:
        self._producer: IPushProducer = transport
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._received += len(data)
        if self._expected is not None and self._received > self._expected:
            self._abort(BackendUnavailable(f"body longer than the expected {self._expected} bytes"))
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._timeout)
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes > HIGH_WATER and not self._paused:
            self._paused = True
            self._producer.pauseProducing()
        self._kick()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._ended = True
        if self._error is None and not reason.check(ResponseDone, PotentialDataLoss):
            self._error = reason.value
        self._kick()

    def _timed_out(self) -> None:
        self._timer = None
        self._abort(TimeoutError(f"no data for {self._timeout:.0f}s"))

    def _abort(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._pending, self._pending_bytes = [], 0
        if not self._ended and self.connected:
            self._producer.stopProducing()
        self._kick()

    def _kick(self) -> None:
        if self._busy or self._closed:
            return
        if self._pending and self._error is None:
            batch, self._pending = self._pending, []
            self._pending_bytes = 0
            self._busy = True
            self._worker.run(_write_all, self._fd, batch).addCallbacks(self._written, self._failed)
            return
        if not self._ended:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._error is None and self._expected is not None and self._received != self._expected:
            self._error = BackendUnavailable(f"body ended after {self._received} of {self._expected} bytes")
        self._closed = True
        self._worker.run(os.close, self._fd).addBoth(self._report)

    def _report(self, closed: object) -> None:
        if self._error is None and isinstance(closed, Failure):
            self._error = closed.value
        if self.done.called:  # cancelled
            return
        if self._error is None:
            self.done.callback(self._received)
        else:
            self.done.errback(Failure(self._error))

    def _written(self, _: object) -> None:
        self._busy = False
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._timeout)
        if self._paused and self._pending_bytes < LOW_WATER and not self._ended:
            self._paused = False
            self._producer.resumeProducing()
        self._kick()

    def _failed(self, failure: Failure) -> None:
        self._busy = False
        self._abort(failure.value or BackendError("write failed"))


class _Discard(Protocol):
    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        pass


def _write_all(fd: int, batch: list[bytes]) -> None:
    data = memoryview(batch[0] if len(batch) == 1 else b"".join(batch))
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _open_temp(path: str) -> tuple[int, str]:
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX)
    os.fchmod(fd, 0o644)
    return fd, temp


def _remove(temp: str) -> None:
    try:
        os.unlink(temp)
    except FileNotFoundError:
        pass


async def stream_to_file(response: IResponse, path: str, *, worker: Worker, clock: IReactorTime, timeout: float) -> int:
    """Write ``response``'s body to ``path`` atomically: to a temporary file
    beside it, renamed over ``path`` once the whole body (``Content-Length``
    bytes, when given) is on disk. On failure the temporary file is removed
    and ``path`` is left as it was. Returns the byte count."""
    try:
        fd, temp = await worker.run(_open_temp, path)
    except BaseException:
        response.deliverBody(_Discard())
        raise
    try:
        expected = None if response.length is UNKNOWN_LENGTH else int(response.length)
        sink = _FileSink(fd, expected, worker, clock, timeout)
        response.deliverBody(sink)
        size = await sink.done
        await worker.run(os.replace, temp, path)
    except BaseException:
        await worker.run(_remove, temp)
        raise
    return size


# --------------------------------------------------------------------------- the backend


def _check_template(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if urlsplit(value).scheme not in ("http", "https"):
        raise ValueError(f"{attribute.name} must be an http:// or https:// URL, not {value!r}")
    if not any(p in value for p in PLACEHOLDERS):
        raise ValueError(f"{attribute.name} must contain {{digest}} or {{hex}}: {value!r}")


@attrs.frozen
class HTTPBackendConfig:
    """YAML: ``backends: [{namespace: ..., http: {download_url: "https://host/blobs/{digest}"}}]``."""

    # {digest} is replaced by sha256:<hex>, {hex} by the hex alone.
    download_url: str = attrs.field(validator=_check_template)
    http_client: HTTPClientConfig = HTTPClientConfig()

    def url(self, name: str) -> str:
        """The URL of the blob ``name`` (``sha256:<hex>`` or ``<hex>``). Raises ``InvalidName``."""
        hex_ = blob_hex(name)
        return self.download_url.replace("{digest}", f"sha256:{hex_}").replace("{hex}", hex_)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@implementer(IBackend)
@attrs.frozen
class HTTPBackend(ServiceClient):
    """``IBackend`` over ``download_url``, read-only. Build it with ``HTTPBackend.create``."""

    _settings: HTTPBackendConfig
    _worker: Worker

    @classmethod
    def create(cls, config: HTTPBackendConfig, *, http: HTTPClient, clock: IReactorTime, worker: Worker) -> HTTPBackend:
        return cls(http, _origin(config.download_url), clock, config.http_client, settings=config, worker=worker)

    async def _op(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        try:
            return await self._retrying(what, attempt)
        except CancelledError:
            raise
        except Exception as e:
            translated = translate(e, what)
            if translated is e:
                raise
            raise translated from e

    async def _unexpected(self, method: str, url: str, response: IResponse) -> HTTPStatusError:
        try:
            body = await self._read(response, ERROR_BODY)
        except Exception:
            body = b""
        return HTTPStatusError(method, url, response.code, body)

    async def stat(self, namespace: str, name: str) -> BlobInfo:
        url = self._settings.url(name)

        async def attempt() -> BlobInfo:
            response = await self._request("HEAD", url)
            await self._read(response, ERROR_BODY)
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
                await self._read(response, ERROR_BODY)
                raise BlobNotFound(namespace, name)
            if response.code != 200:
                raise await self._unexpected("GET", url, response)
            return await stream_to_file(
                response, path, worker=self._worker, clock=self._clock, timeout=self._config.timeout
            )

        size = await self._op(f"get {url}", attempt)
        log.debug("downloaded {url} ({bytes} bytes)", url=url, bytes=size, namespace=namespace)

    async def upload(self, namespace: str, name: str, path: str) -> None:
        raise read_only("http", "upload")

    async def list(
        self, prefix: str = "", *, continuation: str | None = None, limit: int = DEFAULT_LIST_LIMIT
    ) -> ListPage:
        raise read_only("http", "list")
