"""Request bodies written to disk and hashed in a worker as they arrive.

twisted.web writes each chunk of a request body into ``request.content``
on the reactor thread, then hands the finished file to the handler, which
must copy it again to where it belongs and read it once more to hash it. A
``BodySpool`` takes the chunks instead, queues them, and has the worker
write and hash them, so receiving, writing and hashing overlap (on two
cores) and the body is never read back just to be hashed. When the backlog
grows past ``HIGH_WATER`` it pauses the connection, so a fast client cannot
fill memory. ``UploadArea.append`` can then adopt the file by renaming it.

Given a ``hash_worker`` and a piece length (the origin's), the hashing leaves
the writing thread: each batch is written in the worker while the hash
worker runs the SHA-256 of the whole and the SHA-256 of every piece
(``kraken.core.PieceHasher``) over the same bytes, so a commit needs no second read for
the piece sums.

A write that fails (a full disk, above all) is final: the file is closed and
deleted at once, later chunks are dropped, and ``error`` (when given) is
called with the failure, so the request can be answered before its body has
all arrived: nothing else would resume a connection the spool had paused.

With a ``limit``, a body that passes it is refused the same way, as soon as
the byte past the limit arrives: ``BodyTooLarge``, nothing kept.

A ``BodyTee`` (``tee``) sees every chunk as it arrives, then the end of the
body (or its abort: the body was dropped, or the client went away before it
all arrived): the proxy streams an upload to an origin so. It may pause the
connection too (``hold``/``release``): the connection is paused while the
disk's backlog or any tee holds it.

Only the reactor thread calls the public methods; the worker touches the
file and the hasher one batch at a time, never concurrently.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from kraken.core import PieceHasher
from kraken.files import is_out_of_space
from kraken.workers import Worker

SPOOL_PREFIX = "body-"
HIGH_WATER = 8 << 20
LOW_WATER = 2 << 20


class BodyTooLarge(ValueError):
    """A request body went past the spool's limit (the largest blob the daemon takes)."""

    def __init__(self, limit: int, received: int) -> None:
        super().__init__(f"request body over the limit of {limit} bytes ({received} bytes received)")
        self.limit = limit
        self.received = received


class BodyTee(Protocol):
    """What sees a spooled body's chunks as they arrive (``BodySpool.tee``)."""

    def write(self, data: bytes) -> None: ...

    def end(self) -> None:
        """Every byte of the body has arrived."""

    def abort(self, why: str) -> None:
        """The body will not be whole: dropped, refused or cut short."""


class BodySpool:
    log = Logger()

    def __init__(
        self,
        directory: str,
        worker: Worker,
        *,
        pause: Callable[[], None],
        resume: Callable[[], None],
        error: Callable[[Failure], object] | None = None,
        limit: int | None = None,
        hashing: bool = True,
        hash_worker: Worker | None = None,
        piece_length: int | None = None,
    ) -> None:
        """``error(failure)`` is called once, when a write fails or the body passes ``limit`` bytes (the file is
        gone by then). Without ``hashing`` the body is only written (``hasher`` is None)."""
        fd, self.path = tempfile.mkstemp(dir=directory, prefix=SPOOL_PREFIX)
        os.fchmod(fd, 0o644)  # it may become a blob, readable like any other
        self._file = os.fdopen(fd, "w+b")
        self.pieces = PieceHasher(piece_length) if hashing and piece_length and hash_worker is not None else None
        self.hasher: Any = hashlib.sha256() if hashing and self.pieces is None else None
        self._hash_worker = hash_worker
        self._worker = worker
        self._pause = pause
        self._resume = resume
        self._on_error = error
        self._limit = limit
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._received = 0
        self._busy = False
        self._held: set[str] = set()  # why the connection is paused: "disk", a tee's name
        self._done_receiving = False
        self._closed = False
        self._tee: BodyTee | None = None
        self._error: Failure | None = None
        self._waiters: list[Deferred[None]] = []
        self.adopted = False

    # -- twisted.web's side: chunks in, then tell/seek/read of the whole --

    def write(self, data: bytes) -> None:
        if self._error is not None or self._closed:
            return
        if self._limit is not None and self._received + len(data) > self._limit:
            self._stop(Failure(BodyTooLarge(self._limit, self._received + len(data))))
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        self._received += len(data)
        if self._pending_bytes > HIGH_WATER:
            self.hold("disk")
        if self._tee is not None:
            try:
                self._tee.write(data)
            except Exception:
                self.log.failure("a request body's tee failed")
                self._end_tee("the tee failed")
        self._kick()

    def tell(self) -> int:
        if self._busy or self._pending or self._error is not None:  # still arriving (or dropped): how much so far
            return self._received
        return self._file.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        self._require_flushed()
        return self._file.seek(offset, whence)

    def read(self, n: int = -1) -> bytes:
        self._require_flushed()
        return self._file.read(n)

    def close(self) -> None:
        """Close and delete the file (unless ``adopt`` moved it away), at once or, while a batch is being
        written, once it is (the request may end, its client gone, at any moment). Idempotent."""
        self._end_tee("the request ended before its body had all arrived")
        self._closed = True
        self._pending, self._pending_bytes = [], 0
        if not self._busy:
            self._close_file()

    def _close_file(self) -> None:
        self._file.close()
        if not self.adopted:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(Failure(OSError("the request body was closed before it was all written")))

    # -- ours --

    @property
    def size(self) -> int:
        return self._received

    def tee(self, tee: BodyTee) -> None:
        """Show ``tee`` every chunk from now on (set it before the first), then the body's end or abort."""
        self._tee = tee

    def hold(self, why: str) -> None:
        """Pause the connection for ``why`` (until ``release(why)``), unless the body has all arrived."""
        if self._done_receiving or self._error is not None:
            return
        if not self._held:
            self._pause()
        self._held.add(why)

    def release(self, why: str) -> None:
        """``why`` no longer holds the connection: resume it if nothing else does."""
        if why not in self._held:
            return
        self._held.discard(why)
        if not self._held and not self._done_receiving and self._error is None:
            self._resume()  # (a dropped body's connection stays paused until the refusal is sent)

    def _end_tee(self, why: str | None) -> None:
        """Tell the tee the body is whole (``why`` None) or will not be; once."""
        tee, self._tee = self._tee, None
        if tee is None:
            return
        try:
            if why is None:
                tee.end()
            else:
                tee.abort(why)
        except Exception:
            self.log.failure("a request body's tee failed")

    def running_hash(self) -> Any:
        """The SHA-256 of the body so far (a ``hashlib`` object; None without ``hashing``)."""
        return self.pieces.sha256() if self.pieces is not None else self.hasher

    def done_receiving(self) -> Deferred[None]:
        """The body is complete: never pause the connection again (twisted.web
        owns it from now on). Fires once every byte is on disk."""
        self._done_receiving = True
        self._held.clear()  # twisted.web resumes the transport after the response
        self._end_tee(None if self._error is None else "the body was dropped")
        return self.when_flushed()

    def when_flushed(self) -> Deferred[None]:
        if self._error is not None:
            return fail(self._error)
        if not self._busy and not self._pending:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def adopt(self, dest: str) -> Deferred[None]:
        """Move the flushed file to ``dest`` (same filesystem) in the worker."""
        self._require_flushed()
        self.adopted = True
        return self._worker.run(_move, self._file, self.path, dest)

    def _require_flushed(self) -> None:
        if self._busy or self._pending:
            raise RuntimeError("the request body is still being written")
        if self._error is not None:
            self._error.raiseException()

    def _kick(self) -> None:
        if self._busy:
            return
        if not self._pending:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)
            return
        batch, self._pending = self._pending, []
        self._pending_bytes = 0
        self._busy = True
        if self.pieces is None or self._hash_worker is None:
            self._worker.run(_write, self._file, self.hasher, batch).addCallbacks(self._written, self._failed)
            return
        writing = self._worker.run(_write, self._file, None, batch)
        hashing = self._hash_worker.run(_hash, self.pieces, batch)
        both = gatherResults([writing, hashing], consumeErrors=True)
        both.addErrback(_first_error).addCallbacks(self._written, self._failed)

    def _written(self, _: object) -> None:
        self._busy = False
        if self._closed:
            self._close_file()  # closed while this batch was being written
            return
        if self._error is not None:
            self._close_and_tell()  # refused while this batch was being written
            return
        if self._pending_bytes < LOW_WATER:
            self.release("disk")
        self._kick()

    def _failed(self, failure: Failure) -> None:
        self._busy = False
        if self._closed:
            self._close_file()
            return
        if self._error is not None:
            self._close_and_tell()  # refused already; this batch failed after
            return
        self._stop(failure)

    def _stop(self, failure: Failure) -> None:
        """Drop the body for good: the file deleted (once no batch is being written), ``error`` called."""
        self._error = failure
        self._pending, self._pending_bytes = [], 0
        self._end_tee(f"the body was dropped: {failure.getErrorMessage()}")
        if isinstance(failure.value, BodyTooLarge):
            self.log.info("request body refused: {error}", error=str(failure.value), path=self.path)
        elif is_out_of_space(failure.value):
            self.log.warn(
                "no space left for a request body: dropped it after {bytes} bytes ({error})",
                bytes=self._received,
                error=str(failure.value),
                path=self.path,
            )
        else:
            self.log.failure("writing a request body to {path} failed", failure, path=self.path)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(failure)
        # Free the space now, not when the request ends: that may take a while. The request is answered once
        # the file is gone (after the batch being written, if any), so a client never sees its error while
        # any of the body is still on disk.
        if not self._busy:
            self._close_and_tell()

    def _close_and_tell(self) -> None:
        self.close()
        if self._on_error is not None and self._error is not None:
            on_error, self._on_error = self._on_error, None
            on_error(self._error)


def _write(f: Any, hasher: Any, batch: list[bytes]) -> None:
    # Clients send bodies in small pieces (Go's io.Copy: 32 KiB chunks), so a
    # batch is joined first: one write and one hash call instead of hundreds.
    data = batch[0] if len(batch) == 1 else b"".join(batch)
    f.write(data)
    if hasher is not None:
        hasher.update(data)
    f.flush()


def _hash(pieces: PieceHasher, batch: list[bytes]) -> None:
    for data in batch:
        pieces.update(data)


def _first_error(failure: Failure) -> Failure:
    """The failure of whichever job failed, not gatherResults' wrapper."""
    return failure.value.subFailure if isinstance(failure.value, FirstError) else failure


def _move(f: Any, src: str, dest: str) -> None:
    f.close()
    os.rename(src, dest)
