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
from kraken.p2p.pending import PendingRequests
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

#: The reason a session gives when the peer's handshake did not come in time.
HANDSHAKE_TIMED_OUT = "handshake timed out"

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


@attrs.frozen
class _Identity:
    """What this side's handshake says, and so what the peer's must say too."""

    peer_id: bytes
    info_hash: bytes
    namespace: str
    digest: bytes
    version: int = attrs.field(default=attrs.Factory(lambda self: wire.version_for(self.digest), takes_self=True))

    def problem(self, msg: Handshake, num_pieces: int, expected_peer_id: bytes | None) -> str | None:
        """What is wrong with the peer's handshake ``msg`` (None: nothing)."""
        if msg.version != self.version:
            return f"version {msg.version}"
        if msg.info_hash != self.info_hash:
            return "info hash differs"
        if msg.digest != self.digest:
            return "digest differs"
        if msg.namespace != self.namespace:
            return f"namespace {msg.namespace!r} differs"
        if len(msg.bitfield) != num_pieces:
            return f"{len(msg.bitfield)} pieces, expected {num_pieces}"
        if msg.peer_id == self.peer_id:
            return "connected to itself"
        if expected_peer_id is not None and msg.peer_id != expected_peer_id:
            return "unexpected peer id"
        return None


class PeerSession:
    """One connection's conversation about one blob.

    ``initiator``: this side opened the connection and speaks first. ``expected_peer_id``: if given, the peer's
    handshake must carry it (the id the tracker handed out). ``bitfield`` is copied when the handshake is sent.
    Call ``start()`` once the connection is up. The timeouts come from the caller (``P2PConfig``); the pieces
    asked of the peer are kept by ``PendingRequests`` (kraken/p2p/pending.py).
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
        handshake_timeout: float,
        idle_timeout: float,
        request_timeout: float,
    ) -> None:
        if len(bitfield) != metainfo.num_pieces:
            raise ValueError(f"bitfield of {len(bitfield)} pieces for a blob of {metainfo.num_pieces}")
        self._connection = connection
        self._observer = observer
        self._clock = clock
        self._metainfo = metainfo
        self._bitfield = bitfield
        self._initiator = initiator
        self._handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout
        self._me = _Identity(peer_id, bytes.fromhex(metainfo.info_hash), namespace, metainfo.digest.raw)
        self._expected_peer_id = expected_peer_id

        self.state = State.AWAITING_HANDSHAKE
        self.remote: Handshake | None = None
        self.remote_bitfield = Bitfield(metainfo.num_pieces)
        self.closed: Closed | None = None
        self._started = False
        self._handshake_timer: IDelayedCall | None = None
        self._idle_timer: IDelayedCall | None = None
        self._requests = PendingRequests(clock=clock, timeout=request_timeout, cancel=self._cancel_request)
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
            message = f"this peer speaks versions {wire.WIRE_VERSION} and {wire.SHA512_WIRE_VERSION}"
        else:
            code, message = ErrorCode.PROTOCOL, str(error)
        self._violation(str(error), Error(code, None, message[: wire.MAX_ERROR_MESSAGE // 4]))

    # --- requests made by this side -------------------------------------------------------------------------

    def request_piece(self, index: int, sink: Callable[[Chunk], None]) -> Deferred[int]:
        """Ask the peer for piece ``index``; its payload goes to ``sink`` chunk by chunk as it arrives.

        The Deferred fires with the piece's length when the whole payload has arrived, fails with
        ``PieceRequestFailed`` if the peer answers ``ERROR``, with ``TimeoutError`` if the piece has not started
        to arrive within the request timeout and with ``PeerDisconnected`` if the connection closes. Cancelling
        it sends ``CANCEL``. The request timeout only runs while no payload streams in (``PendingRequests``).
        """
        if self.state is not State.OPEN:
            if self.closed is not None:
                return fail(PeerDisconnected(self.closed.reason, self.closed.refused))
            return fail(SessionNotOpen("the handshake has not completed"))
        self._metainfo.piece_size(index)  # IndexError outside the blob
        if index in self._requests:
            raise ValueError(f"piece {index} is already requested from this peer")
        d = self._requests.add(index, sink)
        self._connection.send(PieceRequest(index))
        self._requests.arm(index)
        return d

    def _cancel_request(self, index: int) -> None:
        if self._requests.withdraw(index, open=self.state is State.OPEN):
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
        self._requests.chunk(index, chunk)

    def on_payload_end(self, index: int) -> None:
        if self.state is not State.OPEN:
            return
        self._requests.ended(index)

    # --- states ---------------------------------------------------------------------------------------------

    def _awaiting_handshake(self, msg: Message) -> None:
        if isinstance(msg, Error):
            self.close(f"peer refused: {msg.code.name}: {msg.message}", refused=msg.code)
            return
        if not isinstance(msg, Handshake):
            self._violation(f"{type(msg).__name__} before the handshake")
            return
        problem = self._me.problem(msg, self._metainfo.num_pieces, self._expected_peer_id)
        if problem is not None:
            code = ErrorCode.UNSUPPORTED_VERSION if msg.version != self._me.version else ErrorCode.UNKNOWN_BLOB
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
        elif not self._requests.started(msg.index):
            self._violation(f"piece {msg.index} was not requested")

    def _error(self, msg: Error) -> None:
        if msg.code in _CLOSING_CODES:
            self.close(f"peer closed: {msg.code.name}: {msg.message}")
            return
        if msg.index is None:
            self.log.info("peer error {code}: {message}", code=msg.code.name, message=msg.message)
            return
        self._requests.refused(msg.index, PieceRequestFailed(msg.index, msg.code, msg.message))

    # --- helpers --------------------------------------------------------------------------------------------

    def _send_handshake(self) -> None:
        bitfield = Bitfield.from_bytes(len(self._bitfield), self._bitfield.to_bytes())
        me = self._me
        self._connection.send(Handshake(me.peer_id, me.info_hash, me.namespace, me.digest, bitfield, me.version))

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
        refused = None if self.closed is None else self.closed.refused
        self._requests.fail_all(lambda: PeerDisconnected(reason, refused))
        waiters, self._handshake_waiters = self._handshake_waiters, []
        for d in waiters:
            d.errback(Failure(PeerDisconnected(reason, refused)))
