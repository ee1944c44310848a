"""One HTTP response body sent on as a request body, in one pass: ``BodyPipe``.

Replication copies a blob from this cluster's origin to a remote's origin without a file in between:
the pipe is the ``IProtocol`` the response (``GET`` from our origin) delivers its body to and the
``IBodyProducer`` of the upload (``PATCH`` to the remote's origin). Memory stays bounded by
back-pressure both ways: when the upload's connection cannot take more, it pauses the pipe and the
pipe pauses the response's connection (TCP then slows our origin down); a token bucket (the remote's
bandwidth limit, ``kraken.throttle``) pauses it too while the bytes already sent exceed the rate.
A response that stalls for ``timeout`` seconds (not paused by us) fails the pipe. Nothing is hashed
here: the receiving origin checks the blob's SHA-256 before it stores it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import TimeoutError
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import implementer

from kraken.throttle import TokenBucket, Unlimited


class PipeBroken(IOError):
    """The response ended early, failed, or stalled."""


@implementer(IBodyProducer)
class BodyPipe(Protocol):
    """``response``'s body as a request body (``length`` is the response's, which must be known),
    paced by ``bucket``. ``sent`` counts the bytes passed on. ``close()`` drops a response whose
    body was never asked for (the upload did not get that far)."""

    def __init__(
        self, response: IResponse, bucket: TokenBucket | Unlimited, clock: IReactorTime, timeout: float
    ) -> None:
        if response.length is UNKNOWN_LENGTH:
            raise ValueError("the response's length is unknown")
        self.length = int(response.length)
        self.sent = 0
        self._response = response
        self._bucket = bucket
        self._clock = clock
        self._timeout = timeout
        self._consumer: IConsumer | None = None
        self._source: IPushProducer | None = None
        self._holds: set[str] = set()  # why the response is paused: "consumer", "rate"
        self._waiting: Deferred[None] | None = None  # a reservation of the bucket
        self._timer: IDelayedCall | None = None
        self._result: Deferred[None] | None = None
        self._stopped = False
        self._delivered = False

    # -- IBodyProducer (the upload's side) ---------------------------------

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        if self._result is not None:
            raise RuntimeError("a BodyPipe produces once")
        self._consumer = consumer
        self._result = Deferred(lambda d: self.stopProducing())
        self._deliver()
        return self._result

    def pauseProducing(self) -> None:
        self._hold("consumer")

    def resumeProducing(self) -> None:
        self._release("consumer")

    def stopProducing(self) -> None:
        self._stop()

    def close(self) -> None:
        """Drop the response (its connection is closed); a pipe that produced already is stopped."""
        self._stop()
        self._deliver()

    # -- IProtocol (the response's side) -----------------------------------

    def makeConnection(self, transport: Any) -> None:
        self._source = transport  # a response body's transport pauses, resumes and stops
        super().makeConnection(transport)
        if self._stopped:
            transport.stopProducing()
        else:
            self._arm()

    def dataReceived(self, data: bytes) -> None:
        if self._stopped or self._consumer is None:
            return
        if not self._holds:
            self._arm()
        self.sent += len(data)
        self._consumer.write(data)  # may pause or stop us
        if self._stopped:
            return
        waiting = self._bucket.reserve(len(data))
        if not waiting.called:
            self._waiting = waiting
            self._hold("rate")
            waiting.addCallbacks(lambda _: self._rate_ok(), lambda f: f.trap(CancelledError))

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._disarm()
        if self._stopped:
            return
        if reason.check(ResponseDone) and self.sent == self.length:
            self._finish(None)
        else:
            error = reason.getErrorMessage() if not reason.check(ResponseDone) else "ended early"
            self._finish(PipeBroken(f"the body being copied broke after {self.sent} bytes: {error}"))

    # -- ours --------------------------------------------------------------

    def _deliver(self) -> None:
        if not self._delivered:
            self._delivered = True
            self._response.deliverBody(self)

    def _rate_ok(self) -> None:
        self._waiting = None
        self._release("rate")

    def _hold(self, why: str) -> None:
        if not self._holds and self._source is not None and not self._stopped:
            self._disarm()
            self._source.pauseProducing()
        self._holds.add(why)

    def _release(self, why: str) -> None:
        self._holds.discard(why)
        if not self._holds and self._source is not None and not self._stopped:
            self._arm()
            self._source.resumeProducing()

    def _arm(self) -> None:
        """(Re)start the stall timer: ``timeout`` seconds from now."""
        self._disarm()
        self._timer = self._clock.callLater(self._timeout, self._stalled)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _stalled(self) -> None:
        self._timer = None
        self._stop()
        self._finish(TimeoutError(f"the body being copied stalled: no data for {self._timeout:.0f}s"))

    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._disarm()
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.cancel()
        if self._source is not None:
            self._source.stopProducing()

    def _finish(self, error: Exception | None) -> None:
        result = self._result
        if result is None or result.called:
            return
        if error is None:
            result.callback(None)
        else:
            result.errback(error)
