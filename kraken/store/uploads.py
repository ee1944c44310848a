"""The upload area: blobs in the making, one file per upload.

An upload is a file named by a random id. Chunks are appended at the current
end (a chunk for any other offset is refused), and a running SHA-256 follows
the appends, so finishing an upload needs no second read of the data. The
digest's algorithm is only known when the upload finishes: SHA-256, the
common case, costs nothing more; a SHA-512 upload is read once more then. The
area never makes anything visible: callers move a finished file elsewhere
(``CAStore.commit``) or hand it on (the proxy), then delete the upload.

Appends to one upload are serialised; the copying and hashing run in the
injected worker, never on the reactor thread.

A full disk (``kraken.files``) ends an upload: an append that fails for
want of space deletes the whole upload (a client cannot finish it anyway)
and raises the error, so no partial or empty file is left to wait for the
expiry.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import IO, Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from kraken.core import Digest, PieceHasher
from kraken.files import is_out_of_space, remove_quietly
from kraken.store.spool import SPOOL_PREFIX, BodySpool
from kraken.workers import Worker

COPY_CHUNK = 1 << 20
_UID = re.compile(r"[0-9a-f]{32}\Z")


class UploadUnknown(KeyError):
    """No upload with this id (never started, cancelled, expired or finished)."""


class RangeMismatch(ValueError):
    """A chunk does not start where the upload currently ends."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"chunk starts at {got} but the upload holds {expected} bytes")
        self.expected = expected
        self.got = got


class UploadTruncated(ValueError):
    """The request body held fewer bytes than it declared."""


class _Upload:
    __slots__ = ("hashed", "hasher", "lock", "pieces", "size")

    def __init__(self, size: int, hasher: Any) -> None:
        self.pieces: PieceHasher | None = None  # piece sums, when the spool made them (the whole in one body)
        self.size = size
        self.hasher = hasher  # None when the running hash is lost (restart)
        self.hashed = size if hasher is not None else -1
        self.lock = DeferredLock()


class UploadArea:
    log = Logger()

    def __init__(
        self,
        root: str,
        worker: Worker,
        *,
        max_body: int | None = None,
        hashing: bool = True,
        hash_worker: Worker | None = None,
        piece_length: int | None = None,
    ) -> None:
        """``max_body``: the largest request body ``spool`` takes (None: no limit). Without ``hashing`` no
        running hash follows the appends (whoever the upload is handed to checks its digest), and ``digest``
        reads the file. With a ``hash_worker`` and a ``piece_length``, a spooled body is hashed there, its
        piece sums too (``piece_sums``)."""
        self.hashing = hashing
        #: ``tee(method, path, spool)``, called for each new spool: may give it a ``BodyTee`` (``BodySpool.tee``).
        self.tee: Callable[[bytes, bytes, BodySpool], object] | None = None
        #: ``on_gone(uid)``, called when an upload is deleted or moved away.
        self.on_gone: Callable[[str], object] | None = None
        self._max_body = max_body
        self._new_spool = functools.partial(
            BodySpool, root, worker, limit=max_body, hashing=hashing, hash_worker=hash_worker, piece_length=piece_length
        )
        self._root = root
        self._worker = worker
        self._live: dict[str, _Upload] = {}
        os.makedirs(root, exist_ok=True)
        # Request bodies (``body-*``) of a previous run were never finished.
        for name in os.listdir(root):
            if name.startswith(SPOOL_PREFIX):
                remove_quietly(os.path.join(root, name))

    def spool(
        self,
        *,
        pause: Callable[[], None],
        resume: Callable[[], None],
        error: Callable[[Failure], object] | None = None,
        line: tuple[bytes, bytes] = (b"", b""),
    ) -> BodySpool:
        """A sink for a request body, on the upload area's filesystem, so
        ``append`` can take it by renaming (``make_site(spool=...)``).
        ``line``: the request's method and path, which ``tee`` (when set) is
        shown with the new spool, to give it a ``BodyTee`` or not."""
        spool = self._new_spool(pause=pause, resume=resume, error=error)
        if self.tee is not None:
            try:
                self.tee(line[0], line[1], spool)
            except Exception:  # the body is still the spool's: only its copy elsewhere is lost
                self.log.failure("teeing a request body failed")
        return spool

    def path(self, uid: str) -> str:
        if not _UID.match(uid):
            raise UploadUnknown(uid)
        return os.path.join(self._root, uid)

    def _get(self, uid: str) -> _Upload:
        up = self._live.get(uid)
        if up is not None:
            return up
        # An upload this process did not start (restart): adopt it from disk,
        # without a running hash.
        try:
            size = os.stat(self.path(uid)).st_size
        except FileNotFoundError:
            raise UploadUnknown(uid) from None
        up = self._live[uid] = _Upload(size, None)
        return up

    async def create(self) -> str:
        uid = uuid.uuid4().hex
        await self._worker.run(_create_file, self.path(uid))
        self._live[uid] = _Upload(0, hashlib.sha256() if self.hashing else None)
        return uid

    def size(self, uid: str) -> int:
        return self._get(uid).size

    def replaced(self, uid: str, size: int, sha256: Any = None) -> None:
        """Upload ``uid``'s file was replaced whole (a download from a backend): ``size`` bytes, whose running
        SHA-256 is ``sha256`` when the writer hashed them as it wrote (None: read again for the digest)."""
        self._live[uid] = _Upload(size, sha256)

    async def append(self, uid: str, source: IO[bytes], offset: int | None = None, length: int | None = None) -> int:
        """Copy ``source`` (from its current position) to the end of the upload.

        ``offset``, when given, must equal the upload's current size.
        ``length``, when given, is how many bytes ``source`` must yield; fewer
        is ``UploadTruncated`` and the upload keeps its previous size.
        Returns the new size.
        """
        up = self._get(uid)
        await up.lock.acquire()
        try:
            if uid not in self._live:
                raise UploadUnknown(uid)
            if offset is not None and offset != up.size:
                raise RangeMismatch(up.size, offset)
            if (
                isinstance(source, BodySpool)
                and up.size == 0
                and (up.hasher is not None or not self.hashing)
                and length in (None, source.size)
            ):
                # The whole upload in one body, already on disk and hashed:
                # take the file as it is.
                await source.adopt(self.path(uid))
                up.size = up.hashed = source.size
                up.hasher = source.running_hash()
                up.pieces = source.pieces
                return up.size
            up.pieces = None
            hasher = up.hasher.copy() if up.hasher is not None and up.hashed == up.size else None
            try:
                written = await self._worker.run(_append, self.path(uid), up.size, source, length, hasher)
            except OSError as e:
                if is_out_of_space(e):
                    self.log.warn(
                        "no space left for upload {uid}: deleted it ({bytes} bytes) ({error})",
                        uid=uid,
                        bytes=up.size,
                        error=str(e),
                    )
                    await self.delete(uid)
                raise
            up.size += written
            if hasher is not None:
                up.hasher, up.hashed = hasher, up.size
            return up.size
        finally:
            up.lock.release()

    async def digest(self, uid: str, algorithm: str = "sha256") -> Digest:
        """The upload's digest: a SHA-256 from the running hash, anything else (or a lost hash) read again."""
        up = self._get(uid)
        await up.lock.acquire()
        try:
            if algorithm == "sha256" and up.hasher is not None and up.hashed == up.size:
                return Digest(up.hasher.copy().hexdigest())
            return Digest(await self._worker.run(hash_file, self.path(uid), algorithm), algorithm)
        finally:
            up.lock.release()

    def piece_sums(self, uid: str, piece_length: int) -> tuple[bytes, ...] | None:
        """The upload's piece sums for ``piece_length``, if its spool computed them as it arrived (None: read
        the file for them)."""
        up = self._get(uid)
        info = None if up.pieces is None else up.pieces.finish()
        if info is None or info.piece_length != piece_length or info.length != up.size:
            return None
        return info.piece_sums

    async def delete(self, uid: str) -> None:
        path = self.path(uid)
        self._live.pop(uid, None)
        self._gone(uid)
        await self._worker.run(remove_quietly, path)

    def forget(self, uid: str) -> None:
        """Drop the bookkeeping of an upload whose file was moved away."""
        self._live.pop(uid, None)
        self._gone(uid)

    def live_size(self, uid: str) -> int | None:
        """The size of upload ``uid`` if this process is keeping it (never looks at the disk), else None."""
        up = self._live.get(uid)
        return None if up is None else up.size

    def _gone(self, uid: str) -> None:
        if self.on_gone is not None:
            try:
                self.on_gone(uid)
            except Exception:
                self.log.failure("the hook of a deleted upload failed", uid=uid)

    async def expire(self, now: float, max_age: float) -> list[str]:
        """Delete uploads untouched for ``max_age`` seconds; return their ids."""
        stale = await self._worker.run(_stale_files, self._root, now - max_age)
        for uid in stale:
            up = self._live.get(uid)
            if up is not None and up.lock.locked:
                continue
            await self.delete(uid)
            self.log.info("expired upload {uid}", uid=uid)
        return stale


def _create_file(path: str) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.close(fd)


def _append(path: str, at: int, source: IO[bytes], length: int | None, hasher: Any) -> int:
    """Copy and hash in one pass. ``hasher`` is the caller's private copy, so
    a failure part-way leaves the upload's own running hash untouched."""
    written = 0
    with open(path, "r+b") as out:
        out.seek(at)
        try:
            while length is None or written < length:
                want = COPY_CHUNK if length is None else min(COPY_CHUNK, length - written)
                chunk = source.read(want)
                if not chunk:
                    break
                out.write(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                written += len(chunk)
            if length is not None and written < length:
                raise UploadTruncated(f"body ended after {written} of {length} bytes")
        except BaseException:
            out.truncate(at)
            raise
    return written


def hash_file(path: str, algorithm: str = "sha256") -> str:
    """The hex digest of the file at ``path`` (blocking: run it in a worker)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stale_files(root: str, before: float) -> list[str]:
    stale = []
    for entry in os.scandir(root):
        if _UID.match(entry.name) and entry.stat().st_mtime < before:
            stale.append(entry.name)
    return stale


class UploadExpiry(TimerService):
    """Deletes uploads untouched for ``ttl`` seconds, sweeping every quarter
    TTL (between 1 s and 5 min).

    ``expire(now, ttl)`` does the work (``UploadArea.expire``, or the
    registry API's wrapper that also forgets its sessions). Its failures are
    logged, never raised, so the timer keeps running. The first sweep runs
    one interval after startup, so starting a daemon does no disk work.
    """

    log = Logger()

    def __init__(self, expire: Callable[[float, float], Awaitable[object]], *, clock: IReactorTime, ttl: float) -> None:
        super().__init__(max(1.0, min(ttl / 4, 300.0)), self._tick)
        self.clock = clock
        self._clock = clock  # TimerService.clock is Optional; this one is not
        self.setName("upload-expiry")
        self._expire = expire
        self._ttl = ttl
        self._started = False

    def _tick(self) -> Deferred[None] | None:
        if not self._started:  # TimerService calls once at start: skip that one
            self._started = True
            return None
        return Deferred.fromCoroutine(self._sweep())

    async def _sweep(self) -> None:
        try:
            await self._expire(self._clock.seconds(), self._ttl)
        except Exception:
            self.log.failure("expiring stale uploads failed")
