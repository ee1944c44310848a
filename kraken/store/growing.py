"""A file being written front to back whose length is known in advance: ``GrowingFile``.

Two writers use it: an origin's fetch from an upstream registry (the backend's download counts the bytes it has put
on disk) and an agent streaming a blob from an origin that is still fetching it (``kraken.agent.fromorigin``). Their
readers (``kraken.registry.streaming.GrowingReader``) serve the bytes already on disk while the rest arrives.

- ``length``: the size the file will have (the backend's ``stat``, an origin's ``Content-Length``);
- ``advance(n)``: the writer has the first ``n`` bytes on disk; ``when_written(n)`` fires once it has;
- ``attach(fd)``: a descriptor of the file that readers duplicate (``open_reader``, once ``opened()`` fired), so
  that renames and deletions of the file (the commit, the cleanup of a failure) never pull it from under them.
  A second ``attach`` (the
  writer started again from byte 0: a retried download) ends the file for its readers, who may have read bytes
  of the first attempt: they get an error, the writer goes on without them;
- ``end(error)``: the file is whole and proven to be what it was named for (None: the writer committed it), or
  it never will be (the error). ``ended()`` fires then, failing with the error; a ``when_written`` that will
  never fire is left to its reader, who stops waiting on ``ended``.

Reactor thread only; nothing here does I/O but closing and duplicating descriptors.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure


class Restarted(Exception):
    """The writer started the file again from its first byte: what its readers read may be of the first attempt."""


class GrowingFile:
    def __init__(self, length: int) -> None:
        self.length = length
        self.written = 0
        self._fd: int | None = None
        self._waiters: list[tuple[int, Deferred[None]]] = []
        self._ends: list[Deferred[None]] = []
        self._opens: list[Deferred[None]] = []
        self._error: BaseException | None = None
        self._done = False
        #: The SHA-256 (a ``hashlib`` object) of the bytes written, when the writer hashed them as it wrote.
        self.sha256: Any = None

    @property
    def live(self) -> bool:
        """Whether a reader may still join (once ``opened``): not ended."""
        return not self._done

    @property
    def succeeded(self) -> bool:
        return self._done and self._error is None

    def attach(self, fd: int) -> None:
        """The file's descriptor (owned from now on: closed at the end). See the module for a second one."""
        if self._done:
            os.close(fd)
            return
        if self._fd is not None:
            os.close(fd)
            self.end(Restarted("the download started again from its first byte"))
            return
        self._fd = fd
        opens, self._opens = self._opens, []
        for d in opens:
            d.callback(None)

    def opened(self) -> Deferred[None]:
        """Fires once readers may ``open_reader`` (the writer attached the file); fails if it ended first."""
        if self._done:
            return fail(Failure(self._error or ValueError("the file ended before a reader came")))
        if self._fd is not None:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._opens.remove(d) if d in self._opens else None)
        self._opens.append(d)
        return d

    def advance(self, written: int) -> None:
        """The first ``written`` bytes are on disk."""
        if self._done or written <= self.written:
            return
        self.written = min(written, self.length)
        ready = [d for n, d in self._waiters if n <= self.written]
        self._waiters = [(n, d) for n, d in self._waiters if n > self.written]
        for d in ready:
            d.callback(None)

    def when_written(self, n: int) -> Deferred[None]:
        """Fires once the first ``n`` bytes are on disk (never if the file fails: see ``ended``)."""
        if self.written >= n:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._forget_waiter(d))
        self._waiters.append((n, d))
        return d

    def _forget_waiter(self, d: Deferred[None]) -> None:
        self._waiters = [(n, w) for n, w in self._waiters if w is not d]

    def ended(self) -> Deferred[None]:
        """A new Deferred: fires once the file is whole and proven, fails if it never will be."""
        if self._done:
            return succeed(None) if self._error is None else fail(Failure(self._error))
        d: Deferred[None] = Deferred(lambda d: self._ends.remove(d) if d in self._ends else None)
        self._ends.append(d)
        return d

    def end(self, error: BaseException | None = None) -> None:
        """The file is proven (None) or failed (``error``); its descriptor is closed (readers hold their own)."""
        if self._done:
            return
        if error is None:
            self.advance(self.length)
        self._done, self._error = True, error
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        opens, self._opens = self._opens, []
        for d in opens:
            d.errback(Failure(error or ValueError("the file ended before it was opened")))
        ends, self._ends = self._ends, []
        for d in ends:
            if error is None:
                d.callback(None)
            else:
                d.errback(Failure(error))

    def open_reader(self) -> int:
        """A descriptor of the file of its own for a reader, to close when done; ``ValueError`` unless ``live``."""
        if self._fd is None or self._done:
            raise ValueError("the file is not being written")
        return os.dup(self._fd)
