"""The content-addressed cache.

Layout under the store's root::

    uploads/<uid>                      blobs being pushed (UploadArea)
    downloads/<hex>/                   blobs being fetched piece by piece (DownloadArea)
    tmp/<random>/                      a blob being committed
    cache/ab/cd/<hex>/data             the blob, named by its SHA-256
    cache/ab/cd/<hex>/metainfo         its MetaInfo (JSON), written at commit
    cache/ab/cd/<hex>/access           last access time (seconds, text)

Commit verifies the SHA-256 in the worker, writes the metainfo beside the
data in a private ``tmp/`` directory, then renames that whole directory into
place. A rename of a directory is atomic, so a reader finds either nothing or
a complete blob with its metainfo; two commits of the same blob race on the
rename, the loser sees the winner's directory and deletes its own copy.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable

import attrs
from twisted.internet.defer import CancelledError, gatherResults
from twisted.logger import Logger

from kraken.core import Digest, MetaInfo, PieceLengthRule
from kraken.files import is_out_of_space, remove_quietly
from kraken.store.downloads import DownloadArea, pread
from kraken.store.uploads import COPY_CHUNK, UploadArea
from kraken.workers import Worker


class DigestMismatch(ValueError):
    def __init__(self, expected: Digest, actual: Digest) -> None:
        super().__init__(f"content is {actual}, not {expected}")
        self.expected = expected
        self.actual = actual


@attrs.frozen
class CommitResult:
    metainfo: MetaInfo
    created: bool  # False: the blob was already there and the upload was dropped


class CAStore:
    log = Logger()

    def __init__(
        self,
        root: str,
        *,
        worker: Worker,
        piece_rule: PieceLengthRule,
        now: Callable[[], float],
        hash_worker: Worker | None = None,
    ) -> None:
        """``now`` gives the time (``clock.seconds``); ``worker`` does disk
        work, ``hash_worker`` (default: ``worker``) hashes pieces."""
        self._root = root
        self._worker = worker
        self._hash_worker = hash_worker or worker
        self._piece_rule = piece_rule
        self._now = now
        self._cache = os.path.join(root, "cache")
        self._tmp = os.path.join(root, "tmp")
        for d in (self._cache, self._tmp):
            os.makedirs(d, exist_ok=True)
        # Anything left in tmp/ is from a commit that crashed: never visible.
        for entry in os.listdir(self._tmp):
            shutil.rmtree(os.path.join(self._tmp, entry), ignore_errors=True)
        # Bodies are hashed in the hash worker as they arrive, with the piece sums of a blob of any size
        # below the rule's first step; a commit of such an upload needs no second read.
        self.uploads = UploadArea(
            os.path.join(root, "uploads"),
            worker,
            hash_worker=self._hash_worker,
            piece_length=piece_rule.piece_length(0),
        )
        self.downloads = DownloadArea(
            os.path.join(root, "downloads"), worker=worker, hash_worker=self._hash_worker, install=self.install
        )

    def _dir(self, digest: Digest) -> str:
        return os.path.join(self._cache, *digest.shard, digest.hex)

    def blob_path(self, digest: Digest) -> str:
        """Where the blob's data lives once committed (it may not exist)."""
        return os.path.join(self._dir(digest), "data")

    async def stat(self, digest: Digest) -> int | None:
        """The blob's size, or None if the cache does not hold it."""
        return await self._worker.run(_size_or_none, self.blob_path(digest))

    async def stat_many(self, digests: list[Digest]) -> dict[Digest, int]:
        """The sizes of those of ``digests`` the cache holds (one trip to the worker)."""
        paths = [(d, self.blob_path(d)) for d in digests]
        return await self._worker.run(_sizes, paths)

    async def metainfo(self, digest: Digest) -> MetaInfo | None:
        data = await self._worker.run(_read_or_none, os.path.join(self._dir(digest), "metainfo"))
        return None if data is None else MetaInfo.from_json(data)

    async def read_range(self, digest: Digest, offset: int, size: int) -> bytes:
        """``size`` bytes of a cached blob from ``offset`` (a piece to serve); ``FileNotFoundError`` if absent."""
        return await self._worker.run(pread, self.blob_path(digest), offset, size)

    async def touch(self, digest: Digest) -> None:
        """Record an access (for the cleanup that evicts idle blobs). A full
        disk only loses the record: serving a blob needs no space."""
        try:
            await self._worker.run(_write_access, self._dir(digest), self._now())
        except OSError as e:
            if not is_out_of_space(e):
                raise
            self.log.warn("no space left to record an access to {digest} ({error})", digest=str(digest), error=str(e))

    async def _piece_sums(self, src: str, digest: Digest, size: int, known: tuple[bytes, ...] | None) -> MetaInfo:
        piece_length = self._piece_rule.piece_length(size)
        if known is not None:
            return MetaInfo(digest=digest, length=size, piece_length=piece_length, piece_sums=known)
        count = max(1, -(-size // piece_length))
        middle = count // 2
        ranges = [(0, middle), (middle, count)] if middle else [(0, count)]
        parts = await gatherResults([self._hash_worker.run(_hash_pieces, src, piece_length, a, b) for a, b in ranges])
        sums = tuple(s for part in parts for s in part)
        return MetaInfo(digest=digest, length=size, piece_length=piece_length, piece_sums=sums)

    async def install(self, path: str, info: MetaInfo) -> CommitResult:
        """Move the complete blob at ``path`` (whose pieces were checked
        against ``info``) into the cache, with ``info`` as its metainfo."""
        return await self._worker.run(_install, path, info, self._tmp, self._dir(info.digest), self._now())

    async def commit(self, uid: str, expected: Digest) -> CommitResult:
        """Verify upload ``uid`` against ``expected`` and move it into the cache.

        On a mismatch the upload is deleted and ``DigestMismatch`` raised;
        nothing becomes visible. Any other failure (a full disk while the
        metainfo is written) deletes the upload too and is raised as it is. A SHA-256 comes from the upload's
        running hash (a SHA-512 costs one more read, in the worker), so committing reads the data once, for the
        piece sums, split between two worker jobs (hashlib releases the GIL: two cores).
        """
        actual = await self.uploads.digest(uid, expected.algorithm)
        if actual != expected:
            await self.uploads.delete(uid)
            raise DigestMismatch(expected, actual)
        src = self.uploads.path(uid)
        final = self._dir(expected)
        try:
            existing = await self.metainfo(expected)
            if existing is None:
                size = self.uploads.size(uid)
                known = self.uploads.piece_sums(uid, self._piece_rule.piece_length(size))
                info = await self._piece_sums(src, expected, size, known)
                result = await self._worker.run(_install, src, info, self._tmp, final, self._now())
            else:
                await self._worker.run(remove_quietly, src)
                result = CommitResult(existing, created=False)
        except CancelledError:
            raise  # the worker's job runs on: leave its file alone
        except Exception:
            await self.uploads.delete(uid)
            raise
        self.uploads.forget(uid)
        if not result.created:
            self.log.info("blob {digest} already stored; dropped the duplicate upload", digest=str(expected))
        return result


def _size_or_none(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _sizes(paths: list[tuple[Digest, str]]) -> dict[Digest, int]:
    found = {}
    for digest, path in paths:
        size = _size_or_none(path)
        if size is not None:
            found[digest] = size
    return found


def _read_or_none(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _write_access(blob_dir: str, now: float) -> None:
    if not os.path.isdir(blob_dir):
        return
    tmp = os.path.join(blob_dir, f"access.{uuid.uuid4().hex}")
    try:
        with open(tmp, "w") as f:
            f.write(f"{now:.3f}\n")
        os.replace(tmp, os.path.join(blob_dir, "access"))
    except BaseException:
        remove_quietly(tmp)
        raise


def _hash_pieces(src: str, piece_length: int, first: int, last: int) -> list[bytes]:
    """SHA-256 of pieces ``first`` to ``last - 1`` of the file at ``src``."""
    sums = []
    with open(src, "rb") as f:
        f.seek(first * piece_length)
        for _ in range(first, last):
            h = hashlib.sha256()
            left = piece_length
            while left and (chunk := f.read(min(COPY_CHUNK, left))):
                h.update(chunk)
                left -= len(chunk)
            sums.append(h.digest())
    return sums


def _install(src: str, info: MetaInfo, tmp_root: str, final: str, now: float) -> CommitResult:
    """Move the upload and its metainfo into place with one directory rename."""
    existing = _read_or_none(os.path.join(final, "metainfo"))
    if existing is not None:
        os.unlink(src)
        return CommitResult(MetaInfo.from_json(existing), created=False)
    staging = os.path.join(tmp_root, uuid.uuid4().hex)
    os.mkdir(staging)
    try:
        os.rename(src, os.path.join(staging, "data"))
        with open(os.path.join(staging, "metainfo"), "wb") as f:
            f.write(info.to_json())
        with open(os.path.join(staging, "access"), "w") as f:
            f.write(f"{now:.3f}\n")
        os.makedirs(os.path.dirname(final), exist_ok=True)
        try:
            os.rename(staging, final)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(staging, ignore_errors=True)
            existing = _read_or_none(os.path.join(final, "metainfo"))
            return CommitResult(info if existing is None else MetaInfo.from_json(existing), created=False)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CommitResult(info, created=True)
