"""The sans-IO state machine of one peer connection (docs/wire.md, "Conversation" and "Violations").

A ``PeerSession`` is driven by the decoded stream (it is a ``wire.WireSink``: pass it to a ``wire.Decoder``), by
``connection_lost`` and by its own timers on an injected ``IReactorTime``. It reaches the connection only through
``IPeerConnection`` and tells the scheduler about the peer through ``IPeerSessionObserver``. No reactor, no socket:
``p2p/protocol.py`` adapts it to a transport.

States::

    awaiting_handshake --valid handshake--> open --close()/violation/timeout--> closing --connection_lost--> closed
            \\______________________________________________________________________________/

A violation of the protocol closes the connection with ``Closed.violation`` set, so the caller blacklists the peer
for this blob.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from kraken.core.bitfield import Bitfield
from kraken.core.metainfo import MetaInfo
from kraken.p2p import wire
from kraken.p2p.wire import (
    Cancel,
    Chunk,
    Complete,
    Error,
    ErrorCode,
    FramingError,
    Handshake,
    Have,
    Message,
    Piece,
    PieceRequest,
    UnsupportedVersion,
)

HANDSHAKE_TIMEOUT = 5.0
#: The reason a session gives when the peer's handshake did not come in time.
HANDSHAKE_TIMED_OUT = "handshake timed out"
IDLE_TIMEOUT = 60.0
REQUEST_TIMEOUT = 30.0

# Error codes with which the sender announces that it is closing the connection.
_CLOSING_CODES = frozenset({ErrorCode.PROTOCOL, ErrorCode.UNSUPPORTED_VERSION, ErrorCode.UNKNOWN_BLOB, ErrorCode.BUSY})


class IPeerConnection(Interface):
    """The session's only way to the connection."""

    def send(msg: Message, payload: Chunk = b"") -> None:
        """Write one frame; for a ``Piece``, ``payload`` is its bytes."""

    def close(reason: str) -> None:
        """Close the connection; ``PeerSession.connection_lost`` follows, now or later."""


class IPeerSessionObserver(Interface):
    """What the scheduler hears from an open session. The remote bitfield is ``PeerSession.remote_bitfield``."""

    def piece_requested(session: PeerSession, index: int) -> None:
        """The peer asks for piece ``index``: answer with ``send_piece`` or ``send_unavailable``."""

    def piece_cancelled(session: PeerSession, index: int) -> None:
        """The peer no longer wants piece ``index``."""

    def peer_has(session: PeerSession, index: int) -> None:
        """The peer announced piece ``index`` (already set in ``remote_bitfield``)."""

    def peer_complete(session: PeerSession) -> None:
        """The peer has every piece (``remote_bitfield`` is full)."""


class PeerDisconnected(Exception):
    """The connection closed before the answer came. ``refused``: the peer answered the handshake with this
    ``ERROR`` code (``BUSY``: at capacity, try again later)."""

    def __init__(self, reason: str, refused: ErrorCode | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused = refused


class SessionNotOpen(Exception):
    """A request was made before the handshake completed."""


class PieceRequestFailed(Exception):
    """The peer answered a request with ``ERROR``."""

    def __init__(self, index: int, code: ErrorCode, message: str) -> None:
        super().__init__(f"piece {index}: {code.name}: {message}")
        self.index = index
        self.code = code
        self.message = message


@attrs.frozen
class Closed:
    """How a session ended. ``violation``: the peer broke the protocol; blacklist it for this blob. ``refused``:
    the peer answered our handshake with this error code."""

    reason: str
    violation: bool = False
    refused: ErrorCode | None = None


class State(enum.Enum):
    AWAITING_HANDSHAKE = "awaiting_handshake"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@attrs.define
class _Request:
    deferred: Deferred[int]
    sink: Callable[[Chunk], None]
    timer: IDelayedCall | None = None
    received: int = 0

    def stop_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class PeerSession:
    """One connection's conversation about one blob.

    ``initiator``: this side opened the connection and speaks first. ``expected_peer_id``: if given, the peer's
    handshake must carry it (the id the tracker handed out). ``bitfield`` is copied when the handshake is sent.
    Call ``start()`` once the connection is up.
    """

    log = Logger()

    def __init__(
        self,
        connection: IPeerConnection,
        observer: IPeerSessionObserver,
        *,
        clock: IReactorTime,
        metainfo: MetaInfo,
        namespace: str,
        peer_id: bytes,
        bitfield: Bitfield,
        initiator: bool,
        expected_peer_id: bytes | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        if len(bitfield) != metainfo.num_pieces:
            raise ValueError(f"bitfield of {len(bitfield)} pieces for a blob of {metainfo.num_pieces}")
        self._connection = connection
        self._observer = observer
        self._clock = clock
        self._metainfo = metainfo
        self._namespace = namespace
        self._peer_id = peer_id
        self._bitfield = bitfield
        self._initiator = initiator
        self._expected_peer_id = expected_peer_id
        self._handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout
        self._request_timeout = request_timeout
        self._info_hash = bytes.fromhex(metainfo.info_hash)
        self._digest = bytes.fromhex(metainfo.digest.hex)

        self.state = State.AWAITING_HANDSHAKE
        self.remote: Handshake | None = None
        self.remote_bitfield = Bitfield(metainfo.num_pieces)
        self.closed: Closed | None = None
        self._started = False
        self._handshake_timer: IDelayedCall | None = None
        self._idle_timer: IDelayedCall | None = None
        self._pending: dict[int, _Request] = {}
        self._discard: set[int] = set()  # requests cancelled on our side whose answer may still come
        self._receiving: int | None = None  # the index whose payload is streaming in
        self._streaming = False  # a payload is streaming in, wanted or not: the request timers wait
        self._handshake_waiters: list[Deferred[Handshake]] = []
        self._close_waiters: list[Deferred[Closed]] = []

    # --- lifecycle ------------------------------------------------------------------------------------------

    @property
    def max_payload(self) -> int:
        """The payload limit for this connection's decoder: the blob's piece length."""
        return self._metainfo.piece_length

    def start(self) -> None:
        """The connection is up: arm the handshake timer, and speak first if this side opened it."""
        if self._started:
            raise RuntimeError("session already started")
        self._started = True
        if self.state is not State.AWAITING_HANDSHAKE:
            return
        self._handshake_timer = self._clock.callLater(self._handshake_timeout, self._handshake_timed_out)
        if self._initiator:
            self._send_handshake()

    def when_handshaken(self) -> Deferred[Handshake]:
        """Fires with the peer's handshake once the session is open; fails with ``PeerDisconnected`` if it closes."""
        if self.remote is not None and self.state is State.OPEN:
            return succeed(self.remote)
        if self.closed is not None:
            return fail(PeerDisconnected(self.closed.reason, self.closed.refused))
        d: Deferred[Handshake] = Deferred()
        self._handshake_waiters.append(d)
        return d

    def when_closed(self) -> Deferred[Closed]:
        """Fires with ``Closed`` once the connection is gone."""
        if self.state is State.CLOSED:
            assert self.closed is not None
            return succeed(self.closed)
        d: Deferred[Closed] = Deferred()
        self._close_waiters.append(d)
        return d

    def close(
        self, reason: str, *, violation: bool = False, error: Error | None = None, refused: ErrorCode | None = None
    ) -> None:
        """Close the connection, after sending ``error`` if given. Pending requests fail at once."""
        if self.state in (State.CLOSING, State.CLOSED):
            return
        if error is not None:
            self._connection.send(error)
        self.state = State.CLOSING
        self.closed = Closed(reason, violation, refused)
        self._stop_timers()
        self._fail_all(reason)
        self._connection.close(reason)

    def connection_lost(self, reason: str = "connection lost") -> None:
        if self.state is State.CLOSED:
            return
        if self.closed is None:
            self.closed = Closed(reason)
        self.state = State.CLOSED
        self._stop_timers()
        self._fail_all(self.closed.reason)
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(self.closed)

    def framing_error(self, error: FramingError) -> None:
        """The decoder failed: tell the peer why and close."""
        if isinstance(error, UnsupportedVersion):
            code = ErrorCode.UNSUPPORTED_VERSION
            message = f"this peer speaks version {wire.WIRE_VERSION}"
        else:
            code, message = ErrorCode.PROTOCOL, str(error)
        self._violation(str(error), Error(code, None, message[: wire.MAX_ERROR_MESSAGE // 4]))

    # --- requests made by this side -------------------------------------------------------------------------

    def request_piece(self, index: int, sink: Callable[[Chunk], None]) -> Deferred[int]:
        """Ask the peer for piece ``index``; its payload goes to ``sink`` chunk by chunk as it arrives.

        The Deferred fires with the piece's length when the whole payload has arrived, fails with
        ``PieceRequestFailed`` if the peer answers ``ERROR``, with ``TimeoutError`` if the piece has not started
        to arrive within the request timeout and with ``PeerDisconnected`` if the connection closes. Cancelling
        it sends ``CANCEL``.

        The request timeout only runs while the connection is quiet: while any payload streams in, the timers of
        the requests waiting behind it stop, and they start afresh when it ends. A peer that sends one piece
        after another at the pace of a slow or shared link is busy, not unresponsive, and a pipelined request
        does not time out merely because it waited its turn. A piece that has started is left to the idle
        timeout.
        """
        if self.state is not State.OPEN:
            if self.closed is not None:
                return fail(PeerDisconnected(self.closed.reason, self.closed.refused))
            return fail(SessionNotOpen("the handshake has not completed"))
        self._metainfo.piece_size(index)  # IndexError outside the blob
        if index in self._pending:
            raise ValueError(f"piece {index} is already requested from this peer")
        d: Deferred[int] = Deferred(lambda _: self._cancel_request(index))
        request = self._pending[index] = _Request(d, sink)
        self._discard.discard(index)
        self._connection.send(PieceRequest(index))
        if not self._streaming:
            request.timer = self._clock.callLater(self._request_timeout, self._request_timed_out, index)
        return d

    def _request_timed_out(self, index: int) -> None:
        request = self._pending.get(index)
        if request is None:
            return
        request.timer = None
        self._cancel_request(index)
        request.deferred.errback(TimeoutError(f"piece {index} did not start within {self._request_timeout:g} s"))

    def _cancel_request(self, index: int) -> None:
        request = self._pending.pop(index, None)
        if request is not None:
            request.stop_timer()
        if request is None or self.state is not State.OPEN:
            return
        if self._receiving != index:  # an answer already streaming in is simply dropped
            self._discard.add(index)
        self._connection.send(Cancel(index))

    # --- things this side sends -----------------------------------------------------------------------------

    def send_piece(self, index: int, payload: Chunk) -> None:
        """Answer a request with a verified piece; silently dropped unless open."""
        if self.state is not State.OPEN:
            return
        if len(payload) != self._metainfo.piece_size(index):
            raise ValueError(f"piece {index} is {self._metainfo.piece_size(index)} bytes, not {len(payload)}")
        self._connection.send(Piece(index, len(payload)), payload)

    def send_unavailable(self, index: int, message: str = "") -> None:
        if self.state is State.OPEN:
            self._connection.send(Error(ErrorCode.PIECE_UNAVAILABLE, index, message))

    def send_have(self, index: int) -> None:
        if self.state is State.OPEN:
            self._connection.send(Have(index))

    def send_complete(self) -> None:
        if self.state is State.OPEN:
            self._connection.send(Complete())

    # --- the decoded stream (wire.WireSink) -----------------------------------------------------------------

    def on_message(self, msg: Message) -> None:
        if self.state is State.AWAITING_HANDSHAKE:
            self._awaiting_handshake(msg)
        elif self.state is State.OPEN:
            self._reset_idle()
            self._open(msg)

    def on_payload(self, index: int, chunk: Chunk) -> None:
        if self.state is not State.OPEN:
            return
        self._reset_idle()
        request = self._pending.get(index) if self._receiving == index else None
        if request is not None:
            request.received += len(chunk)
            request.sink(chunk)

    def on_payload_end(self, index: int) -> None:
        if self.state is not State.OPEN:
            return
        self._streaming = False
        request = None
        if self._receiving == index:
            self._receiving = None
            request = self._pending.pop(index, None)
        self._restart_timers()
        if request is not None:
            request.stop_timer()
            request.deferred.callback(request.received)

    def _hold_timers(self) -> None:
        """A payload starts: no request times out while it streams in."""
        self._streaming = True
        for request in self._pending.values():
            request.stop_timer()

    def _restart_timers(self) -> None:
        """A payload ended: the requests that waited behind it get a whole request timeout from now."""
        for index, request in self._pending.items():
            if request.timer is None:
                request.timer = self._clock.callLater(self._request_timeout, self._request_timed_out, index)

    # --- states ---------------------------------------------------------------------------------------------

    def _awaiting_handshake(self, msg: Message) -> None:
        if isinstance(msg, Error):
            self.close(f"peer refused: {msg.code.name}: {msg.message}", refused=msg.code)
            return
        if not isinstance(msg, Handshake):
            self._violation(f"{type(msg).__name__} before the handshake")
            return
        problem = self._check_handshake(msg)
        if problem is not None:
            code = ErrorCode.UNSUPPORTED_VERSION if msg.version != wire.WIRE_VERSION else ErrorCode.UNKNOWN_BLOB
            self._violation(f"bad handshake: {problem}", Error(code, None, problem[: wire.MAX_ERROR_MESSAGE // 4]))
            return
        if not self._initiator:
            self._send_handshake()
            if self.state is not State.AWAITING_HANDSHAKE:  # the send closed the connection
                return
        self.remote = msg
        self.remote_bitfield = Bitfield.from_bytes(len(msg.bitfield), msg.bitfield.to_bytes())
        self.state = State.OPEN
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        self._reset_idle()
        waiters, self._handshake_waiters = self._handshake_waiters, []
        for d in waiters:
            d.callback(msg)

    def _check_handshake(self, msg: Handshake) -> str | None:
        if msg.version != wire.WIRE_VERSION:
            return f"version {msg.version}"
        if msg.info_hash != self._info_hash:
            return "info hash differs"
        if msg.digest != self._digest:
            return "digest differs"
        if msg.namespace != self._namespace:
            return f"namespace {msg.namespace!r} differs"
        if len(msg.bitfield) != self._metainfo.num_pieces:
            return f"{len(msg.bitfield)} pieces, expected {self._metainfo.num_pieces}"
        if msg.peer_id == self._peer_id:
            return "connected to itself"
        if self._expected_peer_id is not None and msg.peer_id != self._expected_peer_id:
            return "unexpected peer id"
        return None

    def _open(self, msg: Message) -> None:
        if isinstance(msg, Handshake):
            self._violation("a second handshake")
            return
        if isinstance(msg, Complete):
            self.remote_bitfield = Bitfield.full(self._metainfo.num_pieces)
            self._observer.peer_complete(self)
            return
        if isinstance(msg, Error):
            self._error(msg)
            return
        if msg.index >= self._metainfo.num_pieces:
            self._violation(f"piece {msg.index} outside the blob's {self._metainfo.num_pieces}")
            return
        if isinstance(msg, Piece):
            self._piece(msg)
        elif isinstance(msg, PieceRequest):
            self._observer.piece_requested(self, msg.index)
        elif isinstance(msg, Have):
            self.remote_bitfield.set(msg.index)
            self._observer.peer_has(self, msg.index)
        else:
            self._observer.piece_cancelled(self, msg.index)

    def _piece(self, msg: Piece) -> None:
        expected = self._metainfo.piece_size(msg.index)
        if msg.length != expected:
            self._violation(f"piece {msg.index} of {msg.length} bytes, expected {expected}")
        elif msg.index in self._pending:
            self._receiving = msg.index
            self._hold_timers()  # it is coming: the idle timeout watches it from here
        elif msg.index in self._discard:
            self._discard.discard(msg.index)
            self._receiving = None
            self._hold_timers()
        else:
            self._violation(f"piece {msg.index} was not requested")

    def _error(self, msg: Error) -> None:
        if msg.code in _CLOSING_CODES:
            self.close(f"peer closed: {msg.code.name}: {msg.message}")
            return
        if msg.index is None:
            self.log.info("peer error {code}: {message}", code=msg.code.name, message=msg.message)
            return
        self._discard.discard(msg.index)
        request = self._pending.pop(msg.index, None)
        if request is not None:
            request.stop_timer()
            request.deferred.errback(PieceRequestFailed(msg.index, msg.code, msg.message))

    # --- helpers --------------------------------------------------------------------------------------------

    def _send_handshake(self) -> None:
        bitfield = Bitfield.from_bytes(len(self._bitfield), self._bitfield.to_bytes())
        self._connection.send(Handshake(self._peer_id, self._info_hash, self._namespace, self._digest, bitfield))

    def _violation(self, reason: str, error: Error | None = None) -> None:
        if error is None:
            error = Error(ErrorCode.PROTOCOL, None, reason[: wire.MAX_ERROR_MESSAGE // 4])
        self.close(reason, violation=True, error=error)

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        self.close(HANDSHAKE_TIMED_OUT)

    def _idle_timed_out(self) -> None:
        self._idle_timer = None
        self.close("idle timeout")

    def _reset_idle(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self._idle_timeout)
        else:
            self._idle_timer = self._clock.callLater(self._idle_timeout, self._idle_timed_out)

    def _stop_timers(self) -> None:
        for timer in (self._handshake_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._handshake_timer = self._idle_timer = None

    def _fail_all(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        self._receiving = None
        refused = None if self.closed is None else self.closed.refused
        for request in pending.values():
            request.stop_timer()
            request.deferred.errback(Failure(PeerDisconnected(reason, refused)))
        waiters, self._handshake_waiters = self._handshake_waiters, []
        for d in waiters:
            d.errback(Failure(PeerDisconnected(reason, refused)))
