"""A response whose body the test delivers by hand, and a consumer that records what a producer
wrote: the two ends of a ``BodyPipe`` without sockets."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


@implementer(IPushProducer)
class BodyTransport:
    """The transport a response body is delivered through: records pauses and stops."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


class FakeResponse:
    """An ``IResponse`` of ``code`` and ``length``; ``deliverBody`` connects the protocol, and
    ``feed``/``end`` (or ``body`` at once with ``auto``) drive it."""

    def __init__(self, body: bytes = b"", *, code: int = 200, length: Any = None, auto: bool = False) -> None:
        self.code = code
        self.length = len(body) if length is None else length
        self.body = body
        self.auto = auto
        self.transport = BodyTransport()
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        if self.auto:
            for i in range(0, len(self.body), 7):
                if self.transport.stopped:
                    return
                protocol.dataReceived(self.body[i : i + 7])
            self.end()

    def feed(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def end(self, reason: BaseException | None = None) -> None:
        self.protocol.connectionLost(Failure(reason or ResponseDone()))


@implementer(IConsumer)
class Collector:
    """An upload's connection: what it was given; ``pause_after`` bytes pauses the producer."""

    def __init__(self, pause_after: int | None = None) -> None:
        self.data = b""
        self.producer: Any = None
        self.pause_after = pause_after

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.data += data
        if self.pause_after is not None and len(self.data) >= self.pause_after and self.producer is not None:
            self.pause_after = None
            self.producer.pauseProducing()


def produce(producer: IBodyProducer, consumer: Collector) -> Any:
    """Start ``producer`` into ``consumer`` as twisted's HTTP client does (registered, streaming)."""
    consumer.registerProducer(producer, True)
    return producer.startProducing(consumer)
