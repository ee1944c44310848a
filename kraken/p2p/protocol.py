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
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IAddress, IConsumer, IPushProducer, ITransport
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
from kraken.p2p.wire import Chunk, FramingError, Message

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
        d: Deferred[None] = Deferred()
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


@implementer(IPeerConnection)
class PeerProtocol(Protocol):
    """One peer connection: bytes in to the session's decoder, frames out to the transport.

    ``session_factory`` is called once, here, with this protocol as the session's ``IPeerConnection``. The session
    starts when the connection is made. The decoder's payload limit is the session's ``max_payload`` (the blob's
    piece length, docs/wire.md "Limits"): the blob is known before the first byte arrives.
    """

    log = Logger()

    def __init__(self, session_factory: SessionFactory) -> None:
        self.session = session_factory(self)
        self._decoder = wire.Decoder(self.session, max_payload=self.session.max_payload)
        self._broken = False  # the decoder failed; further input is dropped
        self._flow = _WriteFlow()

    def when_writable(self) -> Deferred[None]:
        """Fires once the transport's write buffer has room (at once if it has); fails with ``PeerDisconnected``
        if the connection is lost first. Await it before each ``send_piece`` to honour back-pressure."""
        return self._flow.when_writable()

    # --- Protocol -------------------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self._transport()
        if IConsumer.providedBy(transport):  # TCP, TLS, StringTransport, iosim; otherwise always writable
            cast(IConsumer, transport).registerProducer(self._flow, True)
        self.session.start()

    def dataReceived(self, data: bytes) -> None:
        if self._broken or self.session.state in (State.CLOSING, State.CLOSED):
            return
        try:
            self._decoder.feed(data)
        except FramingError as e:
            self._broken = True
            self.session.framing_error(e)  # sends ERROR and closes, through self.close
            self._transport().loseConnection()  # in case the session was already closing

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        message = f"connection lost: {reason.getErrorMessage()}"
        self._flow.stop(message)
        self.session.connection_lost(message)

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
