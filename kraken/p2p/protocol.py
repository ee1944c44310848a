"""The Twisted adapter between a transport and a ``PeerSession`` (STYLE §4, layer 3).

``PeerProtocol`` feeds the inbound bytes to a ``wire.Decoder`` whose sink is the session, and implements
``IPeerConnection`` for it: ``send`` writes the encoded frame with ``transport.writeSequence``, ``close`` loses the
connection. All protocol logic stays in ``session.py``.

Back-pressure: a ``PIECE`` payload is written with ``writeSequence`` as one buffer (``wire.encode`` never copies
it), so a piece of up to the blob's piece length sits in the transport's write buffer until the kernel takes it.
``PeerProtocol`` registers a streaming producer with its transport, which pauses it while the write buffer is
full; a server awaits ``PeerProtocol.when_writable()`` before each ``PeerSession.send_piece``, so at most about one
piece per connection is buffered. ``PeerSession`` has no send from a producer (a piece streamed from disk) yet.

Importing this module does not import the reactor: the clock comes in through ``PeerFactory``.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IAddress, IConsumer, IDelayedCall, IPushProducer, IReactorTime, ITransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kraken.p2p import wire
from kraken.p2p.session import (
    IPeerConnection,
    IPeerSessionObserver,
    PeerDisconnected,
    PeerSession,
    State,
)
from kraken.p2p.wire import Chunk, Error, ErrorCode, FramingError, Handshake, Message

IO_SIZE = 1 << 20
READ_SIZE = 256 << 10
# Bytes a P2P socket may hold that the kernel has not sent yet. Without a bound, send buffers autotune to
# megabytes, and behind a slow link a peer's pieces queue there for seconds: the requester times out and
# asks elsewhere while the queued bytes still go out, wasting the link (bench/RESULTS.md, issue 5).
NOTSENT_LOWAT = 128 << 10


def bound_unsent(transport: Any) -> bool:
    """Set ``TCP_NOTSENT_LOWAT`` on a TCP transport's socket, so it reports writable only once fewer
    than ``NOTSENT_LOWAT`` bytes wait in the kernel; the rest waits in Twisted's buffer, where the
    producer's back-pressure sees it. False where the option or the socket is missing (not Linux, TLS...)."""
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    handle = getattr(transport, "getHandle", None)
    if option is None or handle is None:
        return False
    try:
        sock = handle()
        sock.setsockopt(socket.IPPROTO_TCP, option, NOTSENT_LOWAT)
    except (OSError, AttributeError, TypeError):
        return False
    return True


SessionFactory = Callable[[IPeerConnection], PeerSession]
"""Builds the session of one connection, given the connection it speaks through."""


@implementer(IPushProducer)
class _WriteFlow:
    """Registered with the transport as a streaming producer: knows whether its write buffer is full."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped: str | None = None
        self._waiters: list[Deferred[None]] = []

    def when_writable(self) -> Deferred[None]:
        if self.stopped is not None:
            return fail(PeerDisconnected(self.stopped))
        if not self.paused:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(d)
        return d

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while self._waiters and not self.paused and self.stopped is None:  # a waiter's write may pause us again
            self._waiters.pop(0).callback(None)

    def stopProducing(self) -> None:
        self.stop("connection lost")

    def stop(self, reason: str) -> None:
        if self.stopped is not None:
            return
        self.stopped = reason
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(PeerDisconnected(reason))


Accept = Callable[[Handshake], "Deferred[SessionFactory | Error]"]
"""Decides on an inbound handshake: the session to continue with, or the ``ERROR`` to refuse with."""


@implementer(IPeerConnection)
class PeerProtocol(Protocol):
    """One peer connection: bytes in to the session's decoder, frames out to the transport.

    The side that dials knows the blob before the first byte: give it ``session_factory``, called once, here,
    with this protocol as the session's ``IPeerConnection``; the session starts when the connection is made. The
    side that accepts learns the blob from the peer's handshake: make it with ``PeerProtocol.accepting``. The
    decoder's payload limit is the session's ``max_payload`` (the blob's piece length, docs/wire.md "Limits").
    """

    log = Logger()

    def __init__(self, session_factory: SessionFactory | None) -> None:
        self._broken = False  # the decoder failed; further input is dropped
        self._flow = _WriteFlow()
        self.session: PeerSession | None = None
        self._accept: Accept | None = None
        self._clock: IReactorTime | None = None
        self._handshake_timeout = 0.0
        self._timer: IDelayedCall | None = None
        self._deciding = False
        if session_factory is None:
            self._decoder = wire.Decoder(self, max_payload=0)  # nothing but a handshake until the session exists
        else:
            self.session = session_factory(self)
            self._decoder = wire.Decoder(self, max_payload=self.session.max_payload)

    @classmethod
    def accepting(cls, accept: Accept, *, clock: IReactorTime, handshake_timeout: float) -> PeerProtocol:
        """A protocol for an inbound connection: the first frame must be a ``HANDSHAKE`` within
        ``handshake_timeout``; ``accept`` then names the session (which answers the handshake) or the refusal."""
        protocol = cls(None)
        protocol._accept = accept
        protocol._clock = clock
        protocol._handshake_timeout = handshake_timeout
        return protocol

    def when_writable(self) -> Deferred[None]:
        """Fires once the transport's write buffer has room (at once if it has); fails with ``PeerDisconnected``
        if the connection is lost first. Await it before each ``send_piece`` to honour back-pressure. Cancelling
        it stops the wait."""
        return self._flow.when_writable()

    @property
    def writable(self) -> bool:
        """Whether the transport's write buffer has room (``when_writable`` would fire at once)."""
        return not self._flow.paused and self._flow.stopped is None

    @property
    def lost(self) -> bool:
        """Whether the transport has stopped taking writes: it is going or gone, even if ``connectionLost`` has
        not been called yet (a transport stops its producer first)."""
        return self._flow.stopped is not None

    # --- Protocol -------------------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self._transport()
        # Pieces are MiB-sized: read and send up to 1 MiB per system call (Twisted's defaults are 64 KiB and
        # 128 KiB), and let about one piece sit in the write buffer before the producer is paused.
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = READ_SIZE
        if hasattr(transport, "SEND_LIMIT"):
            transport.SEND_LIMIT = IO_SIZE
        bound_unsent(transport)
        if IConsumer.providedBy(transport):  # TCP, TLS, StringTransport, iosim; otherwise always writable
            cast(IConsumer, transport).registerProducer(self._flow, True)
        if self.session is not None:
            self.session.start()
        elif self._clock is not None:
            self._timer = self._clock.callLater(self._handshake_timeout, self._refuse, "handshake timed out")

    def dataReceived(self, data: bytes) -> None:
        if self._broken or (self.session is not None and self.session.state in (State.CLOSING, State.CLOSED)):
            return
        try:
            self._decoder.feed(data)
        except FramingError as e:
            self._broken = True
            if self.session is not None:
                self.session.framing_error(e)  # sends ERROR and closes, through self.close
            else:
                self._refuse(str(e), Error(ErrorCode.PROTOCOL, None, str(e)[: wire.MAX_ERROR_MESSAGE // 4]))
            self._transport().loseConnection()  # in case the session was already closing

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        message = f"connection lost: {reason.getErrorMessage()}"
        self._flow.stop(message)
        self._stop_timer()
        if self.session is not None:
            self.session.connection_lost(message)

    # --- before the session exists (accepting side): wire.WireSink ------------------------------------------

    def on_message(self, msg: Message) -> None:
        if self.session is not None:
            self.session.on_message(msg)
        elif self._deciding or self._broken:
            self._refuse("a frame before the handshake was answered", Error(ErrorCode.PROTOCOL, None, "wait"))
        elif not isinstance(msg, Handshake):
            self._refuse(f"{type(msg).__name__} before the handshake", Error(ErrorCode.PROTOCOL, None, "handshake"))
        else:
            self._deciding = True
            assert self._accept is not None
            d = self._accept(msg)
            d.addCallbacks(self._accepted, self._accept_failed, callbackArgs=(msg,))

    def on_payload(self, index: int, chunk: Chunk) -> None:
        if self.session is not None:
            self.session.on_payload(index, chunk)

    def on_payload_end(self, index: int) -> None:
        if self.session is not None:
            self.session.on_payload_end(index)

    def _accepted(self, decision: SessionFactory | Error, handshake: Handshake) -> None:
        self._deciding = False
        if self._broken or self.transport is None or self._flow.stopped is not None:
            return
        if isinstance(decision, Error):
            self._refuse(f"refused: {decision.code.name}: {decision.message}", decision)
            return
        self._stop_timer()
        self.session = decision(self)
        self._decoder.max_payload = self.session.max_payload
        self.session.start()
        self.session.on_message(handshake)

    def _accept_failed(self, failure: Failure) -> None:
        self.log.failure("deciding on an inbound handshake failed", failure)
        self._deciding = False
        self._refuse("internal error", Error(ErrorCode.INTERNAL, None, "internal error"))

    def _refuse(self, reason: str, error: Error | None = None) -> None:
        self._stop_timer()
        self._broken = True
        self.log.debug("refusing peer connection: {reason}", reason=reason)
        if self.transport is not None:
            if error is not None:
                self.send(error)
            self.transport.loseConnection()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # --- IPeerConnection ------------------------------------------------------------------------------------

    def send(self, msg: Message, payload: Chunk = b"") -> None:
        # Twisted types writeSequence as bytes only, but its transports buffer the items and join them with
        # b"".join, which takes a memoryview too: the payload is not copied before the transport's own buffering.
        self._transport().writeSequence(cast("list[bytes]", wire.encode(msg, payload)))

    def close(self, reason: str) -> None:
        self.log.debug("closing peer connection: {reason}", reason=reason)
        if self.transport is not None:
            self.transport.loseConnection()

    def _transport(self) -> ITransport:
        if self.transport is None:
            raise RuntimeError("the peer connection is not made yet")
        return self.transport


class PeerFactory(Factory):
    """Builds a ``PeerProtocol`` and its ``PeerSession`` for every connection about one blob.

    Takes what ``PeerSession`` takes, except the connection. ``initiator`` is True for a factory used to connect
    out (this side speaks first) and False for one that listens. ``bitfield`` is this side's live bitfield: each
    session copies it when it sends its handshake.
    """

    def __init__(self, observer: IPeerSessionObserver, **session_options: Any) -> None:
        """``session_options`` are ``PeerSession``'s keyword arguments."""
        self._make_session: SessionFactory = functools.partial(PeerSession, observer=observer, **session_options)

    def buildProtocol(self, addr: IAddress | None) -> PeerProtocol:
        return PeerProtocol(self._make_session)
