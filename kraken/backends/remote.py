"""What the backends that talk HTTP (S3, HDFS, HTTP, an upstream registry) share.

- ``RemoteBackend``: a ``ServiceClient`` whose ``_op`` runs a request with retries and raises ``BackendError``s
  (``translate``: network errors, 429 and 5xx are ``BackendUnavailable``).
- ``BodySink``: one response body written from an offset of a file by the worker, with back-pressure (offset 0
  for a whole blob, a part's offset for a ranged download); ``stream_to_file`` writes a whole body to a temporary
  file beside the target and renames it into place. Given a ``GrowingFile`` (``kraken.store.growing``), it tells it
  each byte that is on disk, so that an origin serves a blob while it still arrives from its backend.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import TimeoutError
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from kraken.backends.base import BackendError, BackendUnavailable
from kraken.files import remove_quietly
from kraken.net.client import HTTPStatusError
from kraken.net.retry import NETWORK_ERRORS
from kraken.net.service import ServiceClient
from kraken.store.growing import GrowingFile
from kraken.workers import Worker

T = TypeVar("T")

# A response stops reading from its connection while this much waits for the disk.
HIGH_WATER = 4 << 20
LOW_WATER = 1 << 20


def translate(e: Exception, what: str, error_code: Callable[[bytes], str] | None = None) -> Exception:
    """The ``BackendError`` for an exception out of a request: network errors, 429 and 5xx are
    ``BackendUnavailable``; other statuses ``BackendError``. ``error_code`` names the server's error from the
    response body (S3's ``<Code>``), for the message."""
    if isinstance(e, BackendError):
        return e
    if isinstance(e, HTTPStatusError):
        code = error_code(e.body) if error_code is not None else ""
        detail = f"{what}: HTTP {e.code}{f' {code}' if code else ''}"
        if e.code >= 500 or e.code == 429:
            return BackendUnavailable(detail)
        return BackendError(detail)
    if isinstance(e, NETWORK_ERRORS):
        return BackendUnavailable(f"{what}: {e.__class__.__name__}: {e}")
    return e


@attrs.frozen
class RemoteBackend(ServiceClient):
    """The base of the HTTP backends."""

    def _error_code(self, body: bytes) -> str:
        """The server's name for an error, from a response body (S3's ``<Code>``); empty if it has none."""
        return ""

    async def _op(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt`` with retries (``ServiceClient._retrying``); failures as ``BackendError``s."""
        try:
            return await self._retrying(what, attempt)
        except CancelledError:
            raise
        except Exception as e:
            translated = translate(e, what, self._error_code)
            if translated is e:
                raise
            raise translated from e


class BodySink(Protocol):
    """Receives one response body and writes it from ``offset`` of the file ``fd`` (which it owns and closes) in
    the worker, one batch at a time, pausing the connection while more than ``HIGH_WATER`` bytes wait for the disk.
    ``done`` fires with the byte count once the body is on disk and ``fd`` is closed; it fails on a body whose
    length is not ``expected`` (when known), a write error, or ``timeout`` seconds without progress. Cancelling
    ``done`` drops the connection; the sink still closes ``fd`` once its last write has returned. ``on_written`` is
    told, after each batch, how many bytes of the body are on disk; ``hasher`` (a ``hashlib`` object) is fed the
    body in order, in the worker, as it is written."""

    def __init__(
        self,
        fd: int,
        offset: int,
        expected: int | None,
        worker: Worker,
        clock: IReactorTime,
        timeout: float,
        *,
        on_written: Callable[[int], None] | None = None,
        hasher: Any = None,
    ) -> None:
        self._fd = fd
        self._start = offset
        self._on_written = on_written
        self._hasher = hasher
        self._position = offset
        self._expected = expected
        self._worker = worker
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._received = 0
        self._busy = False
        self._paused = False
        self._ended = False  # connectionLost has been called
        self._closed = False
        self._error: BaseException | None = None
        self.done: Deferred[int] = Deferred(lambda d: self._abort(CancelledError()))
        self._timeout = timeout
        self._timer: IDelayedCall | None = clock.callLater(timeout, self._timed_out)

    # -- the response's side --

    def makeConnection(self, transport: Any) -> None:
        self._producer: IPushProducer = transport  # a response body's transport pauses, resumes and stops
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._received += len(data)
        if self._expected is not None and self._received > self._expected:
            self._abort(BackendUnavailable(f"body longer than the expected {self._expected} bytes"))
            return
        self._progress()
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

    # -- ours --

    def _progress(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._timeout)

    def _timed_out(self) -> None:
        self._timer = None
        self._abort(TimeoutError(f"no data for {self._timeout:.0f}s"))

    def _abort(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._pending, self._pending_bytes = [], 0
        if not self._ended and self.connected:
            self._producer.stopProducing()  # connectionLost follows
        self._kick()

    def _kick(self) -> None:
        if self._busy or self._closed:
            return
        if self._pending and self._error is None:
            batch, self._pending = self._pending, []
            self._pending_bytes = 0
            self._busy = True
            position = self._position
            self._position += sum(len(b) for b in batch)
            self._worker.run(_pwrite_all, self._fd, batch, position, self._hasher).addCallbacks(
                self._written, self._failed
            )
            return
        if not self._ended:
            return  # more to come
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
        self._progress()
        if self._on_written is not None and self._error is None:
            self._on_written(self._position - self._start)
        if self._paused and self._pending_bytes < LOW_WATER and not self._ended:
            self._paused = False
            self._producer.resumeProducing()
        self._kick()

    def _failed(self, failure: Failure) -> None:
        self._busy = False
        self._abort(failure.value or BackendError("write failed"))


class Discard(Protocol):
    """Takes a response body nobody wants, so the connection is freed."""

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        pass


def _pwrite_all(fd: int, batch: list[bytes], position: int, hasher: Any = None) -> None:
    data = memoryview(batch[0] if len(batch) == 1 else b"".join(batch))
    if hasher is not None:
        hasher.update(data)
    while data:
        written = os.pwrite(fd, data, position)
        data = data[written:]
        position += written


def open_temp(path: str, prefix: str) -> tuple[int, str]:
    """A new empty file (mode 0644) beside ``path``, open for writing, for a download to write into before it is
    renamed over ``path``."""
    fd, temp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=prefix)
    os.fchmod(fd, 0o644)
    return fd, temp


def create_temp(path: str, prefix: str) -> str:
    """Like ``open_temp``, closed: ranged downloads open it once per range."""
    fd, temp = open_temp(path, prefix)
    os.close(fd)
    return temp


async def stream_to_file(
    response: IResponse,
    path: str,
    *,
    worker: Worker,
    clock: IReactorTime,
    timeout: float,
    prefix: str,
    growing: GrowingFile | None = None,
) -> int:
    """Write ``response``'s body to ``path`` atomically: to a temporary file (named ``prefix...``) beside it,
    renamed over ``path`` once the whole body (``Content-Length`` bytes, when given) is on disk. On failure the
    temporary file is removed and ``path`` is left as it was. Returns the byte count. ``growing`` gets a
    descriptor of the temporary file, is told each byte on disk, and gets the body's SHA-256 (hashed as it is
    written) once whole (it is not ended here: the caller proves it)."""
    try:
        fd, temp = await worker.run(open_temp, path, prefix)
        if growing is not None:
            growing.attach(await worker.run(os.dup, fd))
    except BaseException:
        response.deliverBody(Discard())
        raise
    try:
        expected = None if response.length is UNKNOWN_LENGTH else int(response.length)
        on_written, hasher = (None, None) if growing is None else (growing.advance, hashlib.sha256())
        sink = BodySink(fd, 0, expected, worker, clock, timeout, on_written=on_written, hasher=hasher)
        response.deliverBody(sink)
        size = await sink.done
        if growing is not None:
            growing.sha256 = hasher  # this attempt's, whole: a commit needs no second read for the SHA-256
        await worker.run(os.replace, temp, path)
    except BaseException:
        await worker.run(remove_quietly, temp)
        raise
    return size
