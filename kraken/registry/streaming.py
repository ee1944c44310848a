"""Serving a blob that is still arriving: ``StreamingBlob``, a resource that answers a GET (whole or ``Range``)
from a download in progress, as its pieces are checked, without waiting for the rest.

What it reads is an ``IncomingBlob`` (the agent's partial download): its length and piece length, a Deferred per
piece that fires once the piece is checked against its SHA-256 and written, a read of checked bytes (in a worker:
never on the reactor), and ``verified``: the whole blob's SHA-256 checked (the agent installs nothing else).
``GrowingReader`` is the other kind: a file written front to back (``kraken.store.growing.GrowingFile``: an
origin's fetch from its backend, an agent's stream from such an origin), whose "pieces" are ``CHUNK``-sized spans
ready once written, and whose ``verified`` is the writer's proof of the whole digest (its commit).

The rules (docs/operations.md section 26):

- the status line and headers go out when the first byte the client asked for is checked: 206 with
  ``Content-Range`` for ``Range: bytes=N-``, ``bytes=N-M`` or ``bytes=-K``, else 200; ``Content-Length`` is known
  from the metainfo. An unsatisfiable range is 416 with ``Content-Range: bytes */<size>`` (``byte_range``, before
  anything is read); several ranges, or a unit other than bytes, are ignored (200, the whole blob), as RFC 9110
  allows;
- bytes then go out in order as their pieces are checked, one chunk at a time, read in a worker, and only while
  the client takes them (``IPushProducer``: a paused transport pauses the reads);
- **the last byte of every response waits for the whole blob's SHA-256.** Pieces only prove that the bytes match
  the metainfo, which a forger may have made for other bytes; with ``Content-Length`` a client takes a response
  as whole once it has that many bytes, so the last one is held back until the blob is proven to be the digest
  asked for. If that check fails, or the download fails, after the headers went out, the connection is aborted:
  the client sees a short body, an error for every HTTP client, never a complete response of the wrong bytes.
  Before the headers went out, the answer is 502 UNKNOWN in OCI error JSON (507 when this host's disk is full);
- a client that closes the connection early stops the reads; it is logged at debug level only.
"""

from __future__ import annotations

import os
import re
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from kraken.files import errno_name, is_out_of_space
from kraken.registry.errors import JSON_CONTENT_TYPE, InsufficientStorage, RangeInvalid, RegistryError, Unknown
from kraken.registry.messages import registry_logger
from kraken.store.growing import GrowingFile
from kraken.workers import Worker

#: Bytes read from the partial file and written to the client at a time.
CHUNK = 1 << 20

_RANGE = re.compile(rb"\s*([0-9]{0,18})\s*-\s*([0-9]{0,18})\s*")


def byte_range(raw: bytes | None, length: int) -> tuple[int, int] | None:
    """The ``(first, last)`` bytes (inclusive) a ``Range`` header asks of a blob of ``length`` bytes; None to send
    the whole blob (no header, another unit, several ranges, or a malformed one); ``RangeInvalid`` (416, with
    ``Content-Range: bytes */<length>``) when no byte of it exists."""
    if raw is None:
        return None
    unit, sep, spec = raw.partition(b"=")
    m = _RANGE.fullmatch(spec) if sep and unit.strip().lower() == b"bytes" else None
    if m is None or not (m.group(1) or m.group(2)):
        return None
    if not m.group(1):  # a suffix: the last K bytes
        first, last = max(length - int(m.group(2)), 0), length - 1
        satisfiable = int(m.group(2)) > 0 and length > 0
    else:
        first = int(m.group(1))
        last = min(int(m.group(2)), length - 1) if m.group(2) else length - 1
        satisfiable = first < length and first <= last
    if not satisfiable:
        spec_text = spec.decode("latin-1").strip()
        raise RangeInvalid(
            f"unsatisfiable Range bytes={spec_text} for a blob of {length} bytes",
            status=416,
            headers={"Content-Range": f"bytes */{length}"},
        )
    return first, last


class IncomingBlob(Protocol):
    """A blob being downloaded, as ``StreamingBlob`` reads it."""

    digest: str
    length: int
    piece_length: int

    def when_piece(self, index: int) -> Deferred[None]:
        """Fires once piece ``index`` is checked and written (never, if the download fails: see ``verified``)."""

    def verified(self) -> Deferred[object]:
        """Fires once the whole blob's SHA-256 is checked; fails if it is not the digest, or the download fails."""

    async def read(self, offset: int, size: int) -> bytes:
        """``size`` checked bytes at ``offset`` (read in a worker)."""

    def close(self) -> None:
        """No more reads."""


class DescriptorReads:
    """The reads of an ``IncomingBlob`` through one descriptor of its own (``fd``), in ``worker``: opened before
    anything is sent, so that a rename or deletion of the file never pulls it from under the reader."""

    def __init__(self, digest: str, fd: int, worker: Worker) -> None:
        self.digest = digest
        self._fd = fd
        self._worker = worker

    async def read(self, offset: int, size: int) -> bytes:
        data: bytes = await self._worker.run(os.pread, self._fd, size, offset)
        if len(data) != size:
            raise OSError(f"short read of {self.digest}: {len(data)} of {size} bytes at {offset}")
        return data

    def close(self) -> None:
        os.close(self._fd)


class GrowingReader(DescriptorReads):
    """A ``GrowingFile`` as ``StreamingBlob`` reads it (``IncomingBlob``). ``open`` it; ``close`` it once (the
    producer does)."""

    @classmethod
    async def open(cls, digest: str, growing: GrowingFile, worker: Worker) -> GrowingReader | None:
        """A reader once the writer has the file open; None if the file ended first (failed, or whole already)."""
        try:
            await growing.opened()
        except Exception:
            return None
        return cls(digest, growing, worker) if growing.live else None

    def __init__(self, digest: str, growing: GrowingFile, worker: Worker) -> None:
        super().__init__(digest, growing.open_reader(), worker)
        self._growing = growing
        self.length = growing.length
        self.piece_length = CHUNK

    def when_piece(self, index: int) -> Deferred[None]:
        return self._growing.when_written(min((index + 1) * CHUNK, self.length))

    def verified(self) -> Deferred[object]:
        d: Deferred[Any] = self._growing.ended()
        return d


class StreamingBlob(Resource):
    """The response to one GET of an ``IncomingBlob`` (a new one per request). ``select`` sets the range."""

    isLeaf = True

    def __init__(self, blob: IncomingBlob) -> None:
        super().__init__()
        self.blob = blob
        self.length = blob.length
        self._range: tuple[int, int] | None = None

    def select(self, wanted: tuple[int, int] | None) -> None:
        """Serve bytes ``wanted`` (inclusive; ``byte_range``), or the whole blob (None)."""
        self._range = wanted

    def render_GET(self, request: Request) -> Any:
        first, last = (0, self.length - 1) if self._range is None else self._range
        if self._range is not None:
            request.setResponseCode(206)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (first, last, self.length))
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"etag", f'"{self.blob.digest}"'.encode())
        request.setHeader(b"content-length", b"%d" % (last - first + 1))
        BlobProducer(request, self.blob, first, last).start()
        return NOT_DONE_YET


class _Stopped(Exception):
    """The client went away."""


class _Failed(Exception):
    """The download failed, or the whole blob is not the digest asked for; ``cause`` what it failed with."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


_PENDING = object()


@implementer(IPushProducer)
class BlobProducer:
    """Writes bytes ``first..last`` (inclusive) of ``blob`` to ``request`` as their pieces are checked; the last
    byte once the whole blob is verified. Reactor thread only; reads run in the blob's worker."""

    log = registry_logger(None)

    def __init__(self, request: Request, blob: IncomingBlob, first: int, last: int) -> None:
        self._request = request
        self._blob = blob
        self._first = first
        self._last = last
        self._sent = 0
        self._paused = False
        self._stopped = False
        self._waiting: Deferred[Any] | None = None  # the wait in progress
        self._waiting_for = ""  # "piece", "resume" or "end"
        self._outcome: object = _PENDING  # what ``verified`` gave: a result, or a Failure
        self._verified: Deferred[object] | None = None

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self._verified = self._blob.verified().addBoth(self._ended)
        Deferred.fromCoroutine(self._run()).addErrback(
            lambda f: self.log.failure("streaming {digest} failed", f, digest=self._blob.digest)
        )

    # -- IPushProducer --

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._waiting is not None and self._waiting_for == "resume":
            self._waiting.callback(None)

    def stopProducing(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._cancel_wait()

    # -- the stream --

    def _ended(self, result: object) -> None:
        self._outcome = result
        if isinstance(result, Failure) or self._waiting_for == "end":
            self._cancel_wait()  # a piece that will never come, or the wait for this very end

    def _cancel_wait(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()

    def _check(self) -> None:
        if self._stopped:
            raise _Stopped()
        if isinstance(self._outcome, Failure):
            raise _Failed(self._outcome.getErrorMessage() or repr(self._outcome.value), self._outcome.value)

    async def _wait(self, d: Deferred[Any], what: str) -> None:
        self._waiting, self._waiting_for = d, what
        try:
            await d
        except CancelledError:
            pass
        finally:
            self._waiting, self._waiting_for = None, ""
        self._check()

    async def _send(self, offset: int, size: int) -> None:
        """Bytes ``offset..offset+size`` once their piece is checked, when the client takes them."""
        await self._wait(self._blob.when_piece(offset // self._blob.piece_length), "piece")
        data = await self._blob.read(offset, size)
        self._check()
        if self._paused:
            await self._wait(Deferred(), "resume")
        self._request.write(data)
        self._sent += len(data)

    async def _run(self) -> None:
        try:
            self._check()
            offset, piece = self._first, self._blob.piece_length
            while offset < self._last:  # every byte but the last
                end = min(self._last, (offset // piece + 1) * piece, offset + CHUNK)
                await self._send(offset, end - offset)
                offset = end
            if self._outcome is _PENDING:
                await self._wait(Deferred(), "end")  # the whole blob's SHA-256; ``_ended`` ends the wait
            self._check()
            if self._last >= self._first:
                await self._send(self._last, 1)
            self._request.unregisterProducer()
            self._request.finish()
        except _Stopped:
            self.log.debug(
                "the client closed the connection after {sent} of {bytes} bytes of {digest}: stopped",
                sent=self._sent,
                bytes=self._last - self._first + 1,
                digest=self._blob.digest,
            )
        except _Failed as e:
            self._abort(str(e), e.cause)
        except Exception as e:  # a read failed (the disk): the response cannot go on
            self.log.failure("reading {digest} for a client failed", digest=self._blob.digest)
            self._abort(f"reading the partial blob failed: {e}")
        finally:
            self._blob.close()
            if self._verified is not None and not self._verified.called:
                self._verified.cancel()  # stop waiting for the download's end; the download goes on

    def _abort(self, reason: str, cause: BaseException | None = None) -> None:
        if self._stopped:
            return
        request = self._request
        request.unregisterProducer()
        if not request.startedWriting:
            error: RegistryError = Unknown(
                f"the agent could not download this blob: {reason}", detail={"digest": self._blob.digest}, status=502
            )
            if cause is not None and is_out_of_space(cause):  # this host's disk is full: 507, as anywhere (errors.py)
                error = InsufficientStorage(detail={"reason": errno_name(cause), "digest": self._blob.digest})
            request.setResponseCode(error.status)
            request.responseHeaders.removeHeader(b"content-range")
            request.setHeader(b"content-type", JSON_CONTENT_TYPE)
            body = error.body()
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()
            self.log.warn("download of {digest} failed: {error}", digest=self._blob.digest, error=reason)
            return
        self.log.warn(
            "download of {digest} failed after {sent} bytes were sent: {error}; connection aborted, so that the "
            "client never takes the response as whole",
            digest=self._blob.digest,
            sent=self._sent,
            error=reason,
        )
        transport: Any = request.transport
        abort = getattr(transport, "abortConnection", None) or transport.loseConnection
        abort()
