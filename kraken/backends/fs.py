"""The local filesystem backend: blobs as files under a root directory.

Each name is stored at ``root/<pather path>``; with the
``sharded_docker_blob`` or ``docker_tag`` pather the directory is laid out as
docker/distribution's filesystem driver lays out its ``rootdirectory``, so a
registry's storage directory can serve as a backend and the other way round.
The ``namespace`` only picks the backend (in the router); it plays no part
in where a name is stored.

Writes are atomic: the bytes go to a temporary file (``.kraken-part-*``) in
the destination's directory, which is fsynced (uploads) and renamed into
place, so a reader sees the old blob or the whole new one and a crash leaves
at most a temporary file, which listing ignores. Every disk operation runs
in the injected ``Worker``, never on the reactor thread.

Listing walks the tree below the prefix's directory, maps every file back to
its name with the pather, sorts the names and returns the page after the
continuation token, which is the last name of the previous page.
"""

from __future__ import annotations

import bisect
import os
import stat as statmod
import tempfile
from typing import BinaryIO

from zope.interface import implementer

from kraken.backends.base import (
    DEFAULT_LIST_LIMIT,
    BackendUnavailable,
    BlobInfo,
    BlobNotFound,
    IBackend,
    InvalidName,
    ListPage,
)
from kraken.backends.names import Pather
from kraken.files import remove_quietly
from kraken.workers import Worker

TEMP_PREFIX = ".kraken-part-"
CHUNK = 1 << 20

_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


@implementer(IBackend)
class FSBackend:
    def __init__(self, root: str, pather: Pather, *, worker: Worker) -> None:
        self.root = os.path.abspath(root)
        self.pather = pather
        self._worker = worker

    def __repr__(self) -> str:
        return f"FSBackend({self.root!r}, {self.pather!r})"

    def _local(self, key: str) -> str:
        parts = [p for p in key.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise InvalidName(f"path {key!r} would leave the backend's root")
        return os.path.join(self.root, *parts)

    def _file(self, name: str) -> str:
        local = self._local(self.pather.path(name))
        if os.path.basename(local).startswith(TEMP_PREFIX):
            raise InvalidName(f"names ending in a component starting {TEMP_PREFIX!r} are reserved: {name!r}")
        return local

    async def stat(self, namespace: str, name: str) -> BlobInfo:
        return await self._worker.run(_stat, self._file(name), namespace, name)

    async def download(self, namespace: str, name: str, path: str) -> None:
        await self._worker.run(_download, self._file(name), path, namespace, name)

    async def upload(self, namespace: str, name: str, path: str) -> None:
        await self._worker.run(_upload, path, self._file(name))

    async def list(
        self, prefix: str = "", *, continuation: str | None = None, limit: int = DEFAULT_LIST_LIMIT
    ) -> ListPage:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        key_prefix = self.pather.list_prefix(prefix)
        names = await self._worker.run(_walk, self.root, self.pather, key_prefix, prefix)
        start = 0 if continuation is None else bisect.bisect_right(names, continuation)
        page = names[start : start + limit]
        more = start + limit < len(names)
        return ListPage(tuple(page), page[-1] if more else None)


# -- in the worker ------------------------------------------------------------------------------------------------


def _unavailable(what: str, path: str, e: OSError) -> BackendUnavailable:
    error = BackendUnavailable(f"cannot {what} {path}: {e.strerror or e}")
    error.__cause__ = e
    return error


def _stat(local: str, namespace: str, name: str) -> BlobInfo:
    try:
        st = os.stat(local)
    except _MISSING:
        raise BlobNotFound(namespace, name) from None
    except OSError as e:
        raise _unavailable("stat", local, e) from e
    if not statmod.S_ISREG(st.st_mode):
        raise BlobNotFound(namespace, name)
    return BlobInfo(st.st_size)


def _download(local: str, dest: str, namespace: str, name: str) -> None:
    try:
        src = open(local, "rb")
    except _MISSING:
        raise BlobNotFound(namespace, name) from None
    except OSError as e:
        raise _unavailable("read", local, e) from e
    with src:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(dest)), prefix=TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), 0o644)
                _copy(src, out, read_fault=local)
            os.replace(tmp, dest)
        except BaseException:
            remove_quietly(tmp)
            raise


def _copy(src: BinaryIO, out: BinaryIO, *, read_fault: str | None = None, write_fault: str | None = None) -> None:
    """Copy ``src`` to ``out`` in chunks. An OSError reading (writing) becomes
    ``BackendUnavailable`` when ``read_fault`` (``write_fault``) names the
    backend's file; otherwise it is the caller's local file and propagates."""
    while True:
        try:
            chunk = src.read(CHUNK)
        except OSError as e:
            if read_fault is None:
                raise
            raise _unavailable("read", read_fault, e) from e
        if not chunk:
            return
        try:
            out.write(chunk)
        except OSError as e:
            if write_fault is None:
                raise
            raise _unavailable("write", write_fault, e) from e


def _upload(source: str, local: str) -> None:
    with open(source, "rb") as src:  # the caller's file: its errors propagate as they are
        directory = os.path.dirname(local)
        try:
            os.makedirs(directory, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InvalidName(f"{local}: a parent directory is taken by a blob") from None
        except OSError as e:
            raise _unavailable("create", directory, e) from e
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX)
        except OSError as e:
            raise _unavailable("write in", directory, e) from e
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    os.fchmod(out.fileno(), 0o644)
                except OSError as e:
                    raise _unavailable("write", tmp, e) from e
                _copy(src, out, write_fault=tmp)
                try:
                    out.flush()
                    os.fsync(out.fileno())
                except OSError as e:
                    raise _unavailable("write", tmp, e) from e
            try:
                os.replace(tmp, local)
            except IsADirectoryError:
                raise InvalidName(f"{local} is a directory of other blobs") from None
            except OSError as e:
                raise _unavailable("rename into", local, e) from e
        except BaseException:
            remove_quietly(tmp)
            raise


def _walk(root: str, pather: Pather, key_prefix: str, prefix: str) -> list[str]:
    """Sorted names under ``root`` whose path starts with ``key_prefix`` and name with ``prefix``."""
    head = key_prefix.rpartition("/")[0]
    start_parts = [p for p in head.split("/") if p]
    if any(p in (".", "..") for p in start_parts):
        return []
    start = os.path.join(root, *start_parts)
    names = []

    def on_error(e: OSError) -> None:
        if not isinstance(e, _MISSING):
            raise _unavailable("list", e.filename or start, e) from e

    for dirpath, dirnames, filenames in os.walk(start, onerror=on_error):
        rel = os.path.relpath(dirpath, root)
        rel_key = "" if rel == "." else rel.replace(os.sep, "/")
        # Only descend where a path with key_prefix can be.
        keep = []
        for d in dirnames:
            k = f"{rel_key}/{d}/" if rel_key else f"{d}/"
            if k.startswith(key_prefix) or key_prefix.startswith(k):
                keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            if f.startswith(TEMP_PREFIX):
                continue
            key = f"{rel_key}/{f}" if rel_key else f
            if not key.startswith(key_prefix):
                continue
            try:
                name = pather.name(key)
            except InvalidName:
                continue
            if name.startswith(prefix):
                names.append(name)
    names.sort()
    return names
