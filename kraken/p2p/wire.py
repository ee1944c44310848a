"""The peer-to-peer wire format (docs/wire.md): message types, encoders and an incremental decoder.

Pure: no reactor, no I/O. ``encode`` returns the pieces of a frame for ``transport.writeSequence``; a ``Decoder``
takes bytes as they arrive and hands whole headers to its sink as messages, and the payload of a ``PIECE`` as a
stream of chunks that are never collected in memory. Anything that breaks docs/wire.md raises ``FramingError``;
after that the decoder is dead and the connection must be closed.
"""

from __future__ import annotations

import enum
import struct
from typing import Protocol

import attrs

from kraken.core.bitfield import Bitfield

WIRE_VERSION = 1
# Version 2 is version 1 with a 64-byte digest field: the handshake of a sha512 blob. A sha256 blob's
# connection stays version 1, byte for byte, so peers that speak only version 1 serve sha256 as before.
SHA512_WIRE_VERSION = 2
DIGEST_LENGTHS = {WIRE_VERSION: 32, SHA512_WIRE_VERSION: 64}

MAX_PIECES = 1 << 20
MAX_NAMESPACE = 256
MAX_ERROR_MESSAGE = 256
MAX_PAYLOAD = 32 << 20
NO_PIECE = 0xFFFFFFFF
PEER_ID_LENGTHS = (20, 32)

PREFIX = struct.Struct(">BI")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_PIECE = struct.Struct(">II")
_ERROR = struct.Struct(">HIH")

# The largest handshake: version, id length, 32-byte id, info hash, namespace length, namespace, digest,
# piece count, and the bitfield of MAX_PIECES pieces (of version 1: version 2 has the same cap).
MAX_HEADER = 2 + 1 + 32 + 32 + 2 + MAX_NAMESPACE + 32 + 4 + (MAX_PIECES + 7) // 8
_MIN_HANDSHAKE = 2 + 1 + 20 + 32 + 2 + 0 + 32 + 4 + 1


class FramingError(ValueError):
    """The peer broke the wire format. Close the connection and blacklist the peer for the blob."""


class UnsupportedVersion(FramingError):
    """A handshake of a version this side does not speak; answer ``ERROR(UNSUPPORTED_VERSION)`` and close."""

    def __init__(self, version: int) -> None:
        super().__init__(f"unsupported wire version {version}")
        self.version = version


class MessageType(enum.IntEnum):
    HANDSHAKE = 0x01
    PIECE_REQUEST = 0x02
    PIECE = 0x03
    HAVE = 0x04
    CANCEL = 0x05
    ERROR = 0x06
    COMPLETE = 0x07


class ErrorCode(enum.IntEnum):
    PROTOCOL = 1
    UNSUPPORTED_VERSION = 2
    UNKNOWN_BLOB = 3
    PIECE_UNAVAILABLE = 4
    BUSY = 5
    INTERNAL = 6


def _check_index(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value < NO_PIECE:
        raise ValueError(f"{attribute.name} {value} outside 0..{NO_PIECE - 1}")


def _check_sha256(instance: object, attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if len(value) != 32:
        raise ValueError(f"{attribute.name} must be 32 bytes, got {len(value)}")


def version_for(digest: bytes) -> int:
    """The wire version of a blob's handshake: 1 for a 32-byte (sha256) digest, 2 for a 64-byte (sha512) one."""
    return SHA512_WIRE_VERSION if len(digest) == DIGEST_LENGTHS[SHA512_WIRE_VERSION] else WIRE_VERSION


@attrs.frozen
class Handshake:
    """The first message each way. ``info_hash`` and ``digest`` are raw bytes, not hex: the info hash a SHA-256
    (32 bytes), the digest the blob's SHA-256 (32 bytes, version 1) or SHA-512 (64 bytes, version 2)."""

    peer_id: bytes = attrs.field()
    info_hash: bytes = attrs.field(validator=_check_sha256)
    namespace: str = attrs.field()
    digest: bytes = attrs.field()
    bitfield: Bitfield = attrs.field()
    version: int = attrs.field(default=WIRE_VERSION)

    @peer_id.validator
    def _check_peer_id(self, attribute: object, value: bytes) -> None:
        if len(value) not in PEER_ID_LENGTHS:
            raise ValueError(f"peer id must be 20 or 32 bytes, got {len(value)}")

    @namespace.validator
    def _check_namespace(self, attribute: object, value: str) -> None:
        if len(value.encode("utf-8")) > MAX_NAMESPACE:
            raise ValueError(f"namespace longer than {MAX_NAMESPACE} bytes")

    @bitfield.validator
    def _check_bitfield(self, attribute: object, value: Bitfield) -> None:
        if not 1 <= len(value) <= MAX_PIECES:
            raise ValueError(f"piece count {len(value)} outside 1..{MAX_PIECES}")

    @version.validator
    def _check_version(self, attribute: object, value: int) -> None:
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"version {value} is not a u16")
        # The decoder holds each version to its digest length; here only a version 1 digest must be 32 bytes.
        if len(self.digest) not in DIGEST_LENGTHS.values() or (value == WIRE_VERSION and len(self.digest) != 32):
            raise ValueError(f"digest must be 32 bytes (64 for sha512, version 2), got {len(self.digest)}")


@attrs.frozen
class PieceRequest:
    index: int = attrs.field(validator=_check_index)


@attrs.frozen
class Piece:
    """The header of a piece; ``length`` payload bytes follow it on the wire."""

    index: int = attrs.field(validator=_check_index)
    length: int = attrs.field()

    @length.validator
    def _check_length(self, attribute: object, value: int) -> None:
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"piece length {value} is not a u32")


@attrs.frozen
class Have:
    index: int = attrs.field(validator=_check_index)


@attrs.frozen
class Cancel:
    index: int = attrs.field(validator=_check_index)


@attrs.frozen
class Error:
    """``index`` is None when the error concerns no particular piece."""

    code: ErrorCode = attrs.field(converter=ErrorCode)
    index: int | None = attrs.field(default=None)
    message: str = attrs.field(default="")

    @index.validator
    def _check_index(self, attribute: object, value: int | None) -> None:
        if value is not None and not 0 <= value < NO_PIECE:
            raise ValueError(f"index {value} outside 0..{NO_PIECE - 1}")

    @message.validator
    def _check_message(self, attribute: object, value: str) -> None:
        if len(value.encode("utf-8")) > MAX_ERROR_MESSAGE:
            raise ValueError(f"error message longer than {MAX_ERROR_MESSAGE} bytes")


@attrs.frozen
class Complete:
    pass


Message = Handshake | PieceRequest | Piece | Have | Cancel | Error | Complete
Chunk = bytes | memoryview


def _frame(kind: MessageType, header: bytes) -> bytes:
    return PREFIX.pack(kind, len(header)) + header


def encode_header(msg: Message) -> bytes:
    """The whole frame of ``msg`` up to its header's end (for a ``Piece``, everything but the payload)."""
    if isinstance(msg, Piece):
        return _frame(MessageType.PIECE, _PIECE.pack(msg.index, msg.length))
    if isinstance(msg, PieceRequest):
        return _frame(MessageType.PIECE_REQUEST, _U32.pack(msg.index))
    if isinstance(msg, Have):
        return _frame(MessageType.HAVE, _U32.pack(msg.index))
    if isinstance(msg, Cancel):
        return _frame(MessageType.CANCEL, _U32.pack(msg.index))
    if isinstance(msg, Complete):
        return _frame(MessageType.COMPLETE, b"")
    if isinstance(msg, Error):
        text = msg.message.encode("utf-8")
        index = NO_PIECE if msg.index is None else msg.index
        return _frame(MessageType.ERROR, _ERROR.pack(msg.code, index, len(text)) + text)
    if isinstance(msg, Handshake):
        namespace = msg.namespace.encode("utf-8")
        header = b"".join(
            [
                _U16.pack(msg.version),
                bytes([len(msg.peer_id)]),
                msg.peer_id,
                msg.info_hash,
                _U16.pack(len(namespace)),
                namespace,
                msg.digest,
                _U32.pack(len(msg.bitfield)),
                msg.bitfield.to_bytes(),
            ]
        )
        return _frame(MessageType.HANDSHAKE, header)
    raise TypeError(f"not a wire message: {msg!r}")


def encode(msg: Message, payload: Chunk = b"") -> list[Chunk]:
    """The pieces of ``msg``'s frame, for ``transport.writeSequence``.

    For a ``Piece``, ``payload`` must be exactly ``msg.length`` bytes; it is returned as given, never copied. Every
    other message takes no payload.
    """
    header = encode_header(msg)
    if isinstance(msg, Piece):
        if len(payload) != msg.length:
            raise ValueError(f"piece {msg.index} says {msg.length} bytes, payload has {len(payload)}")
        return [header, payload] if msg.length else [header]
    if len(payload):
        raise ValueError(f"{type(msg).__name__} carries no payload")
    return [header]


def encode_piece(index: int, payload: Chunk) -> list[Chunk]:
    return encode(Piece(index, len(payload)), payload)


class WireSink(Protocol):
    """What a ``Decoder`` delivers to.

    A ``Piece`` goes to ``on_message`` first, then its payload to ``on_payload`` in one or more non-empty chunks
    (none for an empty piece), then ``on_payload_end``. A chunk is a view of the bytes given to ``feed``; a sink
    that keeps one past the call must not assume it stays valid if the caller reuses its buffer.
    """

    def on_message(self, msg: Message) -> None: ...

    def on_payload(self, index: int, chunk: Chunk) -> None: ...

    def on_payload_end(self, index: int) -> None: ...


_EXACT_HEADER = {
    MessageType.PIECE_REQUEST: 4,
    MessageType.PIECE: 8,
    MessageType.HAVE: 4,
    MessageType.CANCEL: 4,
    MessageType.COMPLETE: 0,
}
_HEADER_RANGE = {
    MessageType.HANDSHAKE: (2, MAX_HEADER),  # 2: enough to read the version of any handshake
    MessageType.ERROR: (_ERROR.size, _ERROR.size + MAX_ERROR_MESSAGE),
}

_PREFIX_STATE, _HEADER_STATE, _PAYLOAD_STATE, _FAILED_STATE = range(4)


class Decoder:
    """Incremental decoder of one connection's inbound stream.

    States: PREFIX (collecting the 5-byte type and length) → HEADER (collecting ``hlen`` bytes) → PAYLOAD (a
    ``PIECE``'s payload, streamed) → PREFIX. Only the prefix and the header are buffered, in one ``bytearray``;
    payload bytes go straight from the input to the sink.

    ``max_payload`` is the largest ``PIECE`` length accepted; lower it to the blob's piece length once the blob is
    known. Exceptions raised by the sink propagate unchanged; a ``FramingError`` kills the decoder.
    """

    def __init__(self, sink: WireSink, *, max_payload: int = MAX_PAYLOAD) -> None:
        self._sink = sink
        self.max_payload = max_payload
        self._buf = bytearray()
        self._state = _PREFIX_STATE
        self._need = PREFIX.size
        self._type = MessageType.COMPLETE
        self._index = 0
        self._remaining = 0

    @property
    def at_boundary(self) -> bool:
        """True between frames: nothing of a partly received frame is pending."""
        return self._state == _PREFIX_STATE and not self._buf

    def feed(self, data: Chunk) -> None:
        if self._state == _FAILED_STATE:
            raise FramingError("the decoder already failed")
        try:
            self._feed(data)
        except FramingError:
            self._state = _FAILED_STATE
            self._buf.clear()
            raise

    def _feed(self, data: Chunk) -> None:
        view = memoryview(data)
        end = len(view)
        pos = 0
        while pos < end:
            if self._state == _PAYLOAD_STATE:
                take = min(self._remaining, end - pos)
                # A payload that fills the whole input is handed on as is: no slice, no copy.
                chunk = data if take == end else view[pos : pos + take]
                pos += take
                self._remaining -= take
                self._sink.on_payload(self._index, chunk)
                if not self._remaining:
                    self._end_payload()
                continue
            take = min(self._need - len(self._buf), end - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) < self._need:
                return
            if self._state == _PREFIX_STATE:
                self._prefix()
            else:
                self._header()

    def _prefix(self) -> None:
        kind, length = PREFIX.unpack(self._buf)
        self._buf.clear()
        try:
            self._type = MessageType(kind)
        except ValueError:
            raise FramingError(f"unknown message type 0x{kind:02x}") from None
        exact = _EXACT_HEADER.get(self._type)
        if exact is not None:
            if length != exact:
                raise FramingError(f"{self._type.name} header must be {exact} bytes, got {length}")
        else:
            low, high = _HEADER_RANGE[self._type]
            if not low <= length <= high:
                raise FramingError(f"{self._type.name} header of {length} bytes outside {low}..{high}")
        if length:
            self._state = _HEADER_STATE
            self._need = length
        else:
            self._need = PREFIX.size
            self._sink.on_message(Complete())

    def _header(self) -> None:
        header = bytes(self._buf)
        self._buf.clear()
        self._state = _PREFIX_STATE
        self._need = PREFIX.size
        msg = _parse(self._type, header)
        if isinstance(msg, Piece):
            if msg.length > self.max_payload:
                raise FramingError(f"piece {msg.index} of {msg.length} bytes exceeds the limit {self.max_payload}")
            self._index = msg.index
            self._remaining = msg.length
            self._sink.on_message(msg)
            if msg.length:
                self._state = _PAYLOAD_STATE
            else:
                self._sink.on_payload_end(msg.index)
            return
        self._sink.on_message(msg)

    def _end_payload(self) -> None:
        self._state = _PREFIX_STATE
        self._need = PREFIX.size
        self._sink.on_payload_end(self._index)


def _parse(kind: MessageType, header: bytes) -> Message:
    """One header into its message; every flaw becomes a ``FramingError``."""
    try:
        if kind == MessageType.PIECE:
            index, length = _PIECE.unpack(header)
            return Piece(index, length)
        if kind == MessageType.PIECE_REQUEST:
            return PieceRequest(*_U32.unpack(header))
        if kind == MessageType.HAVE:
            return Have(*_U32.unpack(header))
        if kind == MessageType.CANCEL:
            return Cancel(*_U32.unpack(header))
        if kind == MessageType.ERROR:
            return _parse_error(header)
        return _parse_handshake(header)
    except FramingError:
        raise
    except (ValueError, struct.error) as e:  # UnicodeDecodeError is a ValueError
        raise FramingError(f"malformed {kind.name} header: {e}") from None


def _parse_error(header: bytes) -> Error:
    code, index, text_length = _ERROR.unpack_from(header)
    if len(header) != _ERROR.size + text_length:
        raise FramingError(f"ERROR header is {len(header)} bytes, its fields make {_ERROR.size + text_length}")
    if code not in ErrorCode._value2member_map_:
        raise FramingError(f"unknown error code {code}")
    text = header[_ERROR.size :].decode("utf-8")
    return Error(ErrorCode(code), None if index == NO_PIECE else index, text)


def _parse_handshake(header: bytes) -> Handshake:
    (version,) = _U16.unpack_from(header)
    digest_length = DIGEST_LENGTHS.get(version)
    if digest_length is None:
        raise UnsupportedVersion(version)
    if len(header) < _MIN_HANDSHAKE - 32 + digest_length:
        raise FramingError(f"HANDSHAKE header of {len(header)} bytes is too short")
    id_length = header[2]
    if id_length not in PEER_ID_LENGTHS:
        raise FramingError(f"peer id must be 20 or 32 bytes, got {id_length}")
    pos = 3 + id_length
    peer_id = header[3:pos]
    info_hash = header[pos : pos + 32]
    pos += 32
    (ns_length,) = _U16.unpack_from(header, pos)
    pos += 2
    if ns_length > MAX_NAMESPACE:
        raise FramingError(f"namespace of {ns_length} bytes exceeds {MAX_NAMESPACE}")
    namespace = header[pos : pos + ns_length]
    pos += ns_length
    digest = header[pos : pos + digest_length]
    pos += digest_length
    (pieces,) = _U32.unpack_from(header, pos)
    pos += 4
    if not 1 <= pieces <= MAX_PIECES:
        raise FramingError(f"piece count {pieces} outside 1..{MAX_PIECES}")
    if len(header) != pos + (pieces + 7) // 8:
        raise FramingError(f"HANDSHAKE header is {len(header)} bytes, its fields make {pos + (pieces + 7) // 8}")
    bitfield = Bitfield.from_bytes(pieces, header[pos:])
    return Handshake(peer_id, info_hash, namespace.decode("utf-8"), digest, bitfield, version)
