"""Request bodies for treq that read files in a worker, never on the reactor thread."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

if TYPE_CHECKING:
    from kraken.workers import Worker  # a structural type: net does not import store at run time

DEFAULT_CHUNK = 1 << 20


class SourceTruncated(IOError):
    """The file ended before ``length`` bytes were read."""


@implementer(IBodyProducer)
class ThreadedFileProducer:
    """Produces ``length`` bytes of ``path`` from ``offset`` as a request body.

    Opening, reading and closing the file run in ``worker``; only
    ``consumer.write`` happens on the reactor thread. One chunk is read ahead
    while the consumer has paused us. ``stopProducing`` (the connection went
    away) ends production and the Deferred of ``startProducing`` never fires;
    cancelling that Deferred stops production too.
    """

    def __init__(self, path: str, offset: int, length: int, worker: Worker, chunk: int = DEFAULT_CHUNK) -> None:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        self.length = length
        self._path = path
        self._offset = offset
        self._worker = worker
        self._chunk = chunk
        self._paused = False
        self._stopped = False
        self._unpaused: Deferred[None] | None = None
        self._result: Deferred[None] | None = None

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        if self._result is not None:
            raise RuntimeError("a ThreadedFileProducer produces once")
        result: Deferred[None] = Deferred(lambda d: self._halt())
        self._result = result
        Deferred.fromCoroutine(self._produce(consumer)).addCallbacks(self._done, self._failed)
        return result

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._wake()

    def stopProducing(self) -> None:
        self._halt()

    def _halt(self) -> None:
        self._stopped = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._unpaused = self._unpaused, None
        if waiter is not None:
            waiter.callback(None)

    def _done(self, _: object) -> None:
        assert self._result is not None
        if not self._stopped and not self._result.called:
            self._result.callback(None)

    def _failed(self, failure: Failure) -> None:
        assert self._result is not None
        if not self._stopped and not self._result.called:
            self._result.errback(failure)
        # Stopped: nobody waits for the outcome any more (IBodyProducer.stopProducing).

    async def _produce(self, consumer: IConsumer) -> None:
        if self.length == 0:
            return
        fd = await self._worker.run(os.open, self._path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            position, remaining = self._offset, self.length
            while remaining > 0 and not self._stopped:
                data = await self._worker.run(os.pread, fd, min(self._chunk, remaining), position)
                while self._paused and not self._stopped:
                    self._unpaused = Deferred()
                    await self._unpaused
                if self._stopped:
                    break
                if not data:
                    raise SourceTruncated(
                        f"{self._path} ended at byte {position}, expected {self._offset + self.length}"
                    )
                position += len(data)
                remaining -= len(data)
                consumer.write(data)  # may pause or stop us synchronously
        finally:
            await self._worker.run(os.close, fd)
