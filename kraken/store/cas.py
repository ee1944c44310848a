"""The content-addressed cache.

Layout under the store's root::

    uploads/<uid>                      blobs in the making (UploadArea)
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
import os
import shutil
import uuid
from collections.abc import Callable

import attrs
from twisted.logger import Logger

from kraken.core import Digest, MetaInfo, PieceHasher, PieceLengthRule
from kraken.store.uploads import COPY_CHUNK, UploadArea
from kraken.store.workers import Worker


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

    def __init__(self, root: str, *, worker: Worker, piece_rule: PieceLengthRule, now: Callable[[], float]) -> None:
        """``now`` gives the time (``clock.seconds``)."""
        self._root = root
        self._worker = worker
        self._piece_rule = piece_rule
        self._now = now
        self._cache = os.path.join(root, "cache")
        self._tmp = os.path.join(root, "tmp")
        for d in (self._cache, self._tmp):
            os.makedirs(d, exist_ok=True)
        # Anything left in tmp/ is from a commit that crashed: never visible.
        for entry in os.listdir(self._tmp):
            shutil.rmtree(os.path.join(self._tmp, entry), ignore_errors=True)
        self.uploads = UploadArea(os.path.join(root, "uploads"), worker)

    def _dir(self, digest: Digest) -> str:
        a, b = digest.shard
        return os.path.join(self._cache, a, b, digest.hex)

    def blob_path(self, digest: Digest) -> str:
        """Where the blob's data lives once committed (it may not exist)."""
        return os.path.join(self._dir(digest), "data")

    async def stat(self, digest: Digest) -> int | None:
        """The blob's size, or None if the cache does not hold it."""
        return await self._worker.run(_size_or_none, self.blob_path(digest))

    async def metainfo(self, digest: Digest) -> MetaInfo | None:
        data = await self._worker.run(_read_or_none, os.path.join(self._dir(digest), "metainfo"))
        return None if data is None else MetaInfo.from_json(data)

    async def touch(self, digest: Digest) -> None:
        """Record an access (for the cleanup that evicts idle blobs)."""
        await self._worker.run(_write_access, self._dir(digest), self._now())

    async def commit(self, uid: str, expected: Digest) -> CommitResult:
        """Verify upload ``uid`` against ``expected`` and move it into the cache.

        On a mismatch the upload is deleted and ``DigestMismatch`` raised;
        nothing becomes visible. The SHA-256 comes from the upload's running
        hash, so committing reads the data once, for the piece sums.
        """
        actual = await self.uploads.digest(uid)
        if actual != expected:
            await self.uploads.delete(uid)
            raise DigestMismatch(expected, actual)
        src = self.uploads.path(uid)
        size = self.uploads.size(uid)
        piece_length = self._piece_rule.piece_length(size)
        result = await self._worker.run(
            _commit, src, expected, piece_length, self._tmp, self._dir(expected), self._now()
        )
        self.uploads.forget(uid)
        if not result.created:
            self.log.info("blob {digest} already stored; dropped the duplicate upload", digest=str(expected))
        return result


def _size_or_none(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


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
    with open(tmp, "w") as f:
        f.write(f"{now:.3f}\n")
    os.replace(tmp, os.path.join(blob_dir, "access"))


def _commit(src: str, expected: Digest, piece_length: int, tmp_root: str, final: str, now: float) -> CommitResult:
    existing = _read_or_none(os.path.join(final, "metainfo"))
    if existing is not None:
        os.unlink(src)
        return CommitResult(MetaInfo.from_json(existing), created=False)
    hasher = PieceHasher(piece_length, digest=expected)
    with open(src, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            hasher.update(chunk)
    info = hasher.finish()
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
            return CommitResult(_read_metainfo(final, info), created=False)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CommitResult(info, created=True)


def _read_metainfo(final: str, fallback: MetaInfo) -> MetaInfo:
    data = _read_or_none(os.path.join(final, "metainfo"))
    return fallback if data is None else MetaInfo.from_json(data)
