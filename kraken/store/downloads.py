"""Blobs being downloaded piece by piece (the agent's side of P2P).

Layout under the store's root::

    downloads/<hex>/data        the blob's bytes, written piece by piece at their offsets
    downloads/<hex>/metainfo    the MetaInfo the pieces are checked against
    downloads/<hex>/pieces      which pieces are in ``data`` (Bitfield bytes)

Every piece is checked against its SHA-256 before it is written, and the
piece status is saved after each write, so a process restarted mid-download
reopens the partial blob and fetches only the missing pieces. When the last
piece lands, ``DownloadArea.finish`` checks the whole blob's SHA-256 (the
pieces only prove the bytes match the metainfo, which a forger may have made
for other bytes) and moves it into the cache with the same atomic directory
rename as an upload's commit: a reader never sees a partial blob, nor a blob
that is not the digest it asked for, in the cache.

A full disk (``kraken.files``) is not resumable: ``open`` removes what
it had begun, and the scheduler ``discard``s a partial blob whose piece,
status or install could not be written, so no partial file stays behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.logger import Logger

from kraken.core import Bitfield, Digest, MetaInfo, MetaInfoError
from kraken.files import remove_quietly
from kraken.workers import Worker


class PieceCorrupt(ValueError):
    """A piece's bytes do not match its SHA-256 in the metainfo."""

    def __init__(self, digest: Digest, index: int) -> None:
        super().__init__(f"piece {index} of {digest} does not match its SHA-256")
        self.digest = digest
        self.index = index


class BlobCorrupt(ValueError):
    """A blob whose every piece matched its metainfo but whose whole digest is not the digest asked for: the
    metainfo was forged (or made for other bytes). Nothing was installed and the partial blob is deleted."""

    def __init__(self, digest: Digest, actual: str) -> None:
        super().__init__(
            f"the downloaded blob is {digest.algorithm}:{actual}, not {digest}: its metainfo is forged; not installed"
        )
        self.digest = digest
        self.actual = actual


Install = Callable[[str, MetaInfo], Awaitable[object]]


class PartialBlob:
    """One blob in the making. Use from the reactor thread only; the disk
    work and the hashing run in the workers."""

    log = Logger()

    def __init__(self, directory: str, info: MetaInfo, have: Bitfield, *, worker: Worker, hash_worker: Worker) -> None:
        self.metainfo = info
        self.have = have
        self._dir = directory
        self._worker = worker
        self._hash_worker = hash_worker
        self._status_lock = DeferredLock()
        self._status_wanted = 0  # status versions: one per piece set
        self._status_saved = 0  # the newest version on disk
        self._readers: dict[int, list[Deferred[None]]] = {}  # who waits for which piece (when_piece)

    @property
    def digest(self) -> Digest:
        return self.metainfo.digest

    @property
    def data_path(self) -> str:
        """The partial file: piece ``i``'s bytes are final there once ``when_piece(i)`` has fired."""
        return os.path.join(self._dir, "data")

    def when_piece(self, index: int) -> Deferred[None]:
        """Fires once piece ``index`` is checked and written (at once if it is). Never fails; a reader that stops
        waiting (the download failed) cancels it."""
        if self.have[index]:
            return succeed(None)
        waiting = self._readers.setdefault(index, [])
        d: Deferred[None] = Deferred(lambda d: waiting.remove(d) if d in waiting else None)
        waiting.append(d)
        return d

    def complete(self) -> bool:
        return self.have.complete()

    async def write_piece(self, index: int, data: bytes | bytearray) -> bool:
        """Check piece ``index`` and write it. False if it was already there;
        ``PieceCorrupt`` (nothing written) if it does not match. Both happen
        in one job of the hash worker: a piece is hashed and written while
        it is hot in the CPU's cache."""
        if self.have[index]:
            return False
        info = self.metainfo
        path = os.path.join(self._dir, "data")
        ok = await self._hash_worker.run(
            _check_and_write, info.piece_sums[index], info.piece_size(index), data, path, info.piece_offset(index)
        )
        if not ok:
            raise PieceCorrupt(self.digest, index)
        if self.have[index]:  # written twice concurrently: harmless, same bytes
            return False
        self.have.set(index)
        for reader in self._readers.pop(index, []):
            reader.callback(None)
        await self._save_status()
        return True

    async def read_piece(self, index: int) -> bytes:
        """A piece this blob has (to serve it to other peers while downloading)."""
        if not self.have[index]:
            raise KeyError(f"piece {index} of {self.digest} is not here yet")
        size = self.metainfo.piece_size(index)
        return await self._worker.run(pread, os.path.join(self._dir, "data"), self.metainfo.piece_offset(index), size)

    async def _save_status(self) -> None:
        """Returns once a status that includes every piece set so far is on disk.

        Writes are serialised and coalesced: while one is in progress, the
        pieces that land meanwhile wait and are saved together by the next
        one, so a fast download writes the status file far less often than
        once per piece. The file only ever claims pieces already written."""
        wanted = self._status_wanted = self._status_wanted + 1
        await self._status_lock.acquire()
        try:
            if self._status_saved >= wanted:
                return  # a write that started after our piece landed has saved it
            latest = self._status_wanted
            await self._worker.run(_write_atomically, os.path.join(self._dir, "pieces"), self.have.to_bytes())
            self._status_saved = latest
        finally:
            self._status_lock.release()


class DownloadArea:
    log = Logger()

    def __init__(self, root: str, *, worker: Worker, hash_worker: Worker, install: Install) -> None:
        """``install(data_path, metainfo)`` moves a finished blob into the cache."""
        self._root = root
        self._worker = worker
        self._hash_worker = hash_worker
        self._install = install
        self._open: dict[Digest, PartialBlob] = {}
        os.makedirs(root, exist_ok=True)

    async def open(self, info: MetaInfo) -> PartialBlob:
        """The partial blob for ``info``: the one already open, the one a
        previous run left on disk (its finished pieces kept), or a new one."""
        existing = self._open.get(info.digest)
        if existing is not None:
            return existing
        directory = os.path.join(self._root, info.digest.hex)
        try:
            have_bytes = await self._worker.run(_prepare, directory, info)
        except OSError:
            if info.digest not in self._open:  # nobody else opened it meanwhile
                await self._worker.run(shutil.rmtree, directory, True)
            raise
        have = Bitfield(info.num_pieces) if have_bytes is None else Bitfield.from_bytes(info.num_pieces, have_bytes)
        partial = self._open.get(info.digest)  # opened meanwhile by another caller
        if partial is None:
            partial = PartialBlob(directory, info, have, worker=self._worker, hash_worker=self._hash_worker)
            self._open[info.digest] = partial
            if have.count():
                self.log.info(
                    "resuming {digest}: {have} of {pieces} pieces on disk",
                    digest=str(info.digest),
                    have=have.count(),
                    pieces=info.num_pieces,
                )
        return partial

    async def finish(self, partial: PartialBlob) -> None:
        """Check the whole blob's digest with its algorithm (one pass in the hash worker), then move it into the
        cache and forget it here. ``BlobCorrupt`` if it is not the digest asked for: the partial blob is
        deleted, nothing installed."""
        if not partial.complete():
            raise ValueError(f"{partial.digest} is missing {partial.metainfo.num_pieces - partial.have.count()} pieces")
        data = os.path.join(self._root, partial.digest.hex, "data")
        actual = await self._hash_worker.run(sha256_file, data, partial.digest.algorithm)
        if actual != partial.digest.hex:
            await self.discard(partial.digest)
            raise BlobCorrupt(partial.digest, actual)
        await self._install(data, partial.metainfo)
        self._open.pop(partial.digest, None)
        await self._worker.run(shutil.rmtree, os.path.join(self._root, partial.digest.hex), True)

    async def discard(self, digest: Digest) -> None:
        """Drop a partial blob and its pieces (cancelled download)."""
        self._open.pop(digest, None)
        await self._worker.run(shutil.rmtree, os.path.join(self._root, digest.hex), True)


def _prepare(directory: str, info: MetaInfo) -> bytes | None:
    """Reuse a partial blob made for the same metainfo, else start afresh.
    Returns the saved piece status, or None for a new download."""
    try:
        with open(os.path.join(directory, "metainfo"), "rb") as f:
            saved = MetaInfo.from_json(f.read())
        with open(os.path.join(directory, "pieces"), "rb") as f:
            status = f.read()
        if saved == info and os.path.getsize(os.path.join(directory, "data")) == info.length:
            Bitfield.from_bytes(info.num_pieces, status)  # validates
            return status
    except (OSError, MetaInfoError, ValueError):
        pass
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    with open(os.path.join(directory, "data"), "wb") as f:
        reserve(f.fileno(), info.length)
    _write_atomically(os.path.join(directory, "metainfo"), info.to_json())
    _write_atomically(os.path.join(directory, "pieces"), Bitfield(info.num_pieces).to_bytes())
    return None


def reserve(fd: int, length: int) -> None:
    """Give the new data file its ``length`` on disk now, so that a blob this disk cannot hold fails here with
    ENOSPC (a clean 507 before any byte is served, ``kraken.files``) rather than halfway through the download;
    a sparse file where the filesystem cannot reserve space."""
    if length > 0:
        try:
            os.posix_fallocate(fd, 0, length)
            return
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
    os.ftruncate(fd, length)


def sha256_file(path: str, algorithm: str = "sha256") -> str:
    """The hex SHA-256 (or ``algorithm``) of the file at ``path``, read in large chunks into one reused buffer."""
    h = hashlib.new(algorithm)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _check_and_write(expected: bytes, size: int, data: bytes | bytearray, path: str, offset: int) -> bool:
    """Write ``data`` at ``offset`` if it is the piece whose SHA-256 is ``expected``; False (nothing written)
    if not."""
    if len(data) != size or hashlib.sha256(data).digest() != expected:
        return False
    _pwrite(path, offset, data)
    return True


def _pwrite(path: str, offset: int, data: bytes | bytearray) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    finally:
        os.close(fd)


def pread(path: str, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def _write_atomically(path: str, data: bytes) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
