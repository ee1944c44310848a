"""A disk that fills up on demand, for the tests of ENOSPC and EDQUOT handling.

``FillingFile`` wraps a real file: it takes ``room`` more bytes, writes the
part of a write that fits, then fails as a full filesystem does (so a file is
left half-written, as for real). ``filling_open`` is an ``open`` to patch into
a module, whose files opened for writing share one ``Room``. ``FullDisk`` is a
``Worker`` (inline) whose jobs fail with the errno while it is full.
"""

from __future__ import annotations

import builtins
import errno
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail

from kraken.workers import InlineWorker


def no_space(code: int = errno.ENOSPC) -> OSError:
    return OSError(code, os.strerror(code))


class Room:
    """How many bytes the "disk" still takes; ``None`` is unlimited."""

    def __init__(self, left: int | None, code: int = errno.ENOSPC) -> None:
        self.left = left
        self.code = code

    def take(self, want: int) -> int:
        if self.left is None:
            return want
        got = min(want, self.left)
        self.left -= got
        return got


class FillingFile:
    def __init__(self, f: Any, room: Room) -> None:
        self._f = f
        self._room = room

    def write(self, data: bytes) -> int:
        fits = self._room.take(len(data))
        self._f.write(data[:fits])
        if fits < len(data):
            self._f.flush()
            raise no_space(self._room.code)
        return fits

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> FillingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def filling_open(room: Room) -> Callable[..., Any]:
    def opener(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = builtins.open(path, mode, *args, **kwargs)
        return FillingFile(f, room) if any(c in mode for c in "wa+") else f

    return opener


class FullDisk:
    """An inline ``Worker``; while ``full`` holds function names, those fail with ``code``."""

    def __init__(self, *names: str, code: int = errno.ENOSPC) -> None:
        self.full = set(names)
        self.code = code
        self.failed: list[str] = []
        self._inline = InlineWorker()

    def free(self) -> None:
        self.full = set()

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        if f.__name__ in self.full:
            self.failed.append(f.__name__)
            return fail(no_space(self.code))
        return self._inline.run(f, *args, **kwargs)


def files_under(root: Any) -> list[str]:
    """Every file below ``root`` (relative paths, sorted)."""
    found = []
    for directory, _, names in os.walk(root):
        found += [os.path.relpath(os.path.join(directory, n), root) for n in names]
    return sorted(found)
