"""The wire format of docs/wire.md: exact layouts, round trips under any chunking, and malformed input."""

import itertools
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kraken.core import Bitfield
from kraken.p2p import wire
from kraken.p2p.wire import (
    MAX_HEADER,
    MAX_PIECES,
    Cancel,
    Complete,
    Decoder,
    Error,
    ErrorCode,
    FramingError,
    Handshake,
    Have,
    Piece,
    PieceRequest,
    UnsupportedVersion,
)

INFO_HASH = bytes(range(32))
DIGEST = bytes(range(32, 64))
PEER_ID = b"p" * 20


class Recorder:
    """A sink that records events; consecutive payload chunks of a piece are joined so chunking does not show."""

    def __init__(self):
        self.events = []
        self.chunk_sizes = []

    def on_message(self, msg):
        self.events.append(("msg", msg))

    def on_payload(self, index, chunk):
        assert len(chunk) > 0
        self.chunk_sizes.append(len(chunk))
        if self.events and self.events[-1][0] == "payload" and self.events[-1][1] == index:
            self.events[-1] = ("payload", index, self.events[-1][2] + bytes(chunk))
        else:
            self.events.append(("payload", index, bytes(chunk)))

    def on_payload_end(self, index):
        self.events.append(("end", index))


def to_bytes(msg, payload=b""):
    return b"".join(bytes(p) for p in wire.encode(msg, payload))


def decode(data, chunks=None, **kwargs):
    sink = Recorder()
    decoder = Decoder(sink, **kwargs)
    if chunks is None:
        decoder.feed(data)
    else:
        for chunk in chunks:
            decoder.feed(chunk)
    return sink.events, decoder


def expected_events(msg, payload=b""):
    events = [("msg", msg)]
    if isinstance(msg, Piece):
        if payload:
            events.append(("payload", msg.index, bytes(payload)))
        events.append(("end", msg.index))
    return events


# --- strategies -----------------------------------------------------------------------------------------------

indexes = st.integers(min_value=0, max_value=wire.NO_PIECE - 1)
sha256s = st.binary(min_size=32, max_size=32)
namespaces = st.text(max_size=64).filter(lambda s: len(s.encode()) <= wire.MAX_NAMESPACE)


@st.composite
def bitfields(draw, max_pieces=300):
    n = draw(st.integers(min_value=1, max_value=max_pieces))
    ones = draw(st.sets(st.integers(min_value=0, max_value=n - 1), max_size=n))
    return Bitfield(n, ones)


handshakes = st.builds(
    Handshake,
    peer_id=st.sampled_from([20, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    info_hash=sha256s,
    namespace=namespaces,
    digest=sha256s,
    bitfield=bitfields(),
)
errors = st.builds(
    Error,
    code=st.sampled_from(list(ErrorCode)),
    index=st.none() | indexes,
    message=st.text(max_size=80).filter(lambda s: len(s.encode()) <= wire.MAX_ERROR_MESSAGE),
)
plain_messages = st.one_of(
    handshakes,
    st.builds(PieceRequest, indexes),
    st.builds(Have, indexes),
    st.builds(Cancel, indexes),
    errors,
    st.just(Complete()),
)


@st.composite
def pieces(draw):
    payload = draw(st.binary(max_size=600))
    return Piece(draw(indexes), len(payload)), payload


# A frame is (message, payload); payload is b"" except for pieces.
frames = st.one_of(plain_messages.map(lambda m: (m, b"")), pieces())


@st.composite
def chunkings(draw, data):
    """``data`` cut at arbitrary points."""
    if len(data) < 2:
        return [data]
    cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=len(data) - 1), max_size=30)))
    return [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])]


# --- exact layouts ------------------------------------------------------------------------------------------


def test_piece_request_have_cancel_layout():
    assert to_bytes(PieceRequest(7)) == b"\x02\x00\x00\x00\x04\x00\x00\x00\x07"
    assert to_bytes(Have(0x01020304)) == b"\x04\x00\x00\x00\x04\x01\x02\x03\x04"
    assert to_bytes(Cancel(1)) == b"\x05\x00\x00\x00\x04\x00\x00\x00\x01"


def test_complete_layout():
    assert to_bytes(Complete()) == b"\x07\x00\x00\x00\x00"


def test_piece_layout_and_payload_not_copied():
    payload = b"abcde"
    parts = wire.encode(Piece(3, 5), payload)
    assert parts[0] == b"\x03\x00\x00\x00\x08\x00\x00\x00\x03\x00\x00\x00\x05"
    assert parts[1] is payload
    view = memoryview(b"xyz")
    assert wire.encode_piece(9, view)[1] is view


def test_empty_piece_is_header_only():
    assert wire.encode(Piece(0, 0), b"") == [b"\x03\x00\x00\x00\x08" + bytes(8)]
    events, decoder = decode(to_bytes(Piece(0, 0)))
    assert events == [("msg", Piece(0, 0)), ("end", 0)]
    assert decoder.at_boundary


def test_error_layout():
    assert to_bytes(Error(ErrorCode.PIECE_UNAVAILABLE, 2, "no")) == (
        b"\x06\x00\x00\x00\x0a" + b"\x00\x04" + b"\x00\x00\x00\x02" + b"\x00\x02" + b"no"
    )
    assert to_bytes(Error(ErrorCode.BUSY))[5:] == b"\x00\x05\xff\xff\xff\xff\x00\x00"


def test_handshake_layout():
    msg = Handshake(PEER_ID, INFO_HASH, "ns", DIGEST, Bitfield(9, [0, 8]))
    header = b"".join(
        [b"\x00\x01", b"\x14", PEER_ID, INFO_HASH, b"\x00\x02", b"ns", DIGEST, b"\x00\x00\x00\x09", b"\x80\x80"]
    )
    assert to_bytes(msg) == b"\x01" + struct.pack(">I", len(header)) + header


def test_max_header_is_the_largest_handshake():
    msg = Handshake(b"i" * 32, INFO_HASH, "n" * wire.MAX_NAMESPACE, DIGEST, Bitfield.full(MAX_PIECES))
    data = to_bytes(msg)
    assert len(data) == 5 + MAX_HEADER
    assert decode(data)[0] == [("msg", msg)]


def test_encode_rejects_wrong_payloads():
    with pytest.raises(ValueError):
        wire.encode(Piece(0, 3), b"ab")
    with pytest.raises(ValueError):
        wire.encode(Have(0), b"x")


@pytest.mark.parametrize(
    "build",
    [
        lambda: Handshake(b"short", INFO_HASH, "", DIGEST, Bitfield(1)),
        lambda: Handshake(PEER_ID, b"x", "", DIGEST, Bitfield(1)),
        lambda: Handshake(PEER_ID, INFO_HASH, "n" * 257, DIGEST, Bitfield(1)),
        lambda: Handshake(PEER_ID, INFO_HASH, "", DIGEST, Bitfield(0)),
        lambda: PieceRequest(-1),
        lambda: Have(wire.NO_PIECE),
        lambda: Piece(0, 1 << 32),
        lambda: Error(99),
        lambda: Error(ErrorCode.INTERNAL, None, "é" * 129),
    ],
)
def test_messages_validate_their_fields(build):
    with pytest.raises(ValueError):
        build()


# --- round trips and chunking ------------------------------------------------------------------------------


@given(frames)
def test_every_message_round_trips(frame):
    msg, payload = frame
    events, decoder = decode(to_bytes(msg, payload))
    assert events == expected_events(msg, payload)
    assert decoder.at_boundary


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, max_size=8), st.data())
def test_any_chunking_decodes_identically(stream, data):
    raw = b"".join(to_bytes(m, p) for m, p in stream)
    expected = [e for m, p in stream for e in expected_events(m, p)]
    chunks = data.draw(chunkings(raw))
    events, decoder = decode(raw, chunks)
    assert events == expected
    assert decoder.at_boundary


@given(st.lists(frames, max_size=4))
def test_one_byte_at_a_time(stream):
    raw = b"".join(to_bytes(m, p) for m, p in stream)
    events, _ = decode(raw, [raw[i : i + 1] for i in range(len(raw))])
    assert events == [e for m, p in stream for e in expected_events(m, p)]


@given(st.binary(min_size=1, max_size=5000), st.data())
def test_payload_chunks_concatenate_to_the_payload(payload, data):
    raw = to_bytes(Piece(5, len(payload)), payload) + to_bytes(Have(1))
    sink = Recorder()
    decoder = Decoder(sink)
    for chunk in data.draw(chunkings(raw)):
        decoder.feed(memoryview(chunk))
    assert sink.events == [("msg", Piece(5, len(payload))), ("payload", 5, payload), ("end", 5), ("msg", Have(1))]
    assert sum(sink.chunk_sizes) == len(payload)


def test_payload_filling_the_input_is_passed_through_uncopied():
    seen = []

    class Sink(Recorder):
        def on_payload(self, index, chunk):
            seen.append(chunk)

    decoder = Decoder(Sink())
    decoder.feed(wire.encode_header(Piece(0, 6)))
    body = b"abcdef"
    decoder.feed(body)
    assert seen == [body] and seen[0] is body


def test_a_partial_frame_is_not_a_boundary():
    _, decoder = decode(to_bytes(Have(1))[:3])
    assert not decoder.at_boundary
    _, decoder = decode(to_bytes(Piece(1, 4), b"abcd")[:-1])
    assert not decoder.at_boundary


# --- violations ----------------------------------------------------------------------------------------------


def assert_framing_error(data, chunks=None, **kwargs):
    sink = Recorder()
    decoder = Decoder(sink, **kwargs)
    with pytest.raises(FramingError):
        for chunk in chunks if chunks is not None else [data]:
            decoder.feed(chunk)
    # A failed decoder stays failed.
    with pytest.raises(FramingError):
        decoder.feed(to_bytes(Complete()))
    return sink.events


@pytest.mark.parametrize("kind", [0x00, 0x08, 0x7F, 0xFF])
def test_unknown_type(kind):
    assert_framing_error(bytes([kind]) + bytes(4))


@pytest.mark.parametrize(
    "kind,length",
    [(0x02, 5), (0x02, 3), (0x03, 9), (0x04, 0), (0x05, 8), (0x07, 1), (0x06, 7), (0x06, 8 + 257), (0x01, 1)],
)
def test_header_lengths_the_type_does_not_allow(kind, length):
    # The prefix alone is enough: the decoder must not wait for the header.
    assert_framing_error(struct.pack(">BI", kind, length))


def test_oversize_header_is_refused_from_the_prefix():
    assert_framing_error(struct.pack(">BI", 0x01, MAX_HEADER + 1))
    assert_framing_error(struct.pack(">BI", 0x01, 0xFFFFFFFF))


def test_payload_above_the_limit():
    assert_framing_error(wire.encode_header(Piece(0, 4)), max_payload=3)
    assert_framing_error(wire.encode_header(Piece(0, wire.MAX_PAYLOAD + 1)))
    events, _ = decode(to_bytes(Piece(0, 3), b"abc"), max_payload=3)
    assert events[-1] == ("end", 0)


def test_max_payload_can_be_lowered_between_frames():
    sink = Recorder()
    decoder = Decoder(sink)
    decoder.feed(to_bytes(Piece(0, 4), b"abcd"))
    decoder.max_payload = 2
    with pytest.raises(FramingError):
        decoder.feed(wire.encode_header(Piece(1, 4)))


def handshake_header(**overrides):
    fields = {
        "version": b"\x00\x01",
        "id_len": b"\x14",
        "peer_id": PEER_ID,
        "info_hash": INFO_HASH,
        "ns_len": b"\x00\x02",
        "namespace": b"ns",
        "digest": DIGEST,
        "pieces": b"\x00\x00\x00\x09",
        "bitfield": b"\x80\x80",
        "trailer": b"",
    }
    fields.update(overrides)
    return b"".join(fields.values())


def frame(kind, header):
    return struct.pack(">BI", kind, len(header)) + header


def test_handshake_helper_builds_a_valid_handshake():
    events, _ = decode(frame(0x01, handshake_header()))
    assert events == [("msg", Handshake(PEER_ID, INFO_HASH, "ns", DIGEST, Bitfield(9, [0, 8])))]


@pytest.mark.parametrize(
    "overrides",
    [
        {"id_len": b"\x13"},
        {"id_len": b"\x20"},  # says 32, carries 20: every later field shifts and the sizes disagree
        {"ns_len": b"\x00\x03"},
        {"ns_len": b"\x01\x01", "namespace": b"n" * 257},
        {"namespace": b"\xff\xfe"},
        {"pieces": b"\x00\x00\x00\x00", "bitfield": b""},
        {"pieces": struct.pack(">I", MAX_PIECES + 1)},
        {"pieces": b"\x00\x00\x00\x11"},  # 17 pieces need 3 bitfield bytes
        {"bitfield": b"\x80\x81"},  # a bit set past the 9 pieces
        {"trailer": b"\x00"},
        {"bitfield": b"\x80"},
    ],
)
def test_malformed_handshakes(overrides):
    assert_framing_error(frame(0x01, handshake_header(**overrides)))


def test_unsupported_version_says_which():
    with pytest.raises(UnsupportedVersion) as info:
        decode(frame(0x01, handshake_header(version=b"\x00\x09")))
    assert info.value.version == 9
    # A later version may have a different layout: two bytes are enough to tell.
    with pytest.raises(UnsupportedVersion):
        decode(frame(0x01, b"\x00\x07"))


@pytest.mark.parametrize(
    "header",
    [
        b"\x00\x63" + b"\xff" * 4 + b"\x00\x00",  # unknown code 99
        b"\x00\x00" + b"\xff" * 4 + b"\x00\x00",  # code 0 is undefined
        b"\x00\x01" + b"\xff" * 4 + b"\x00\x03" + b"ab",  # message shorter than its length
        b"\x00\x01" + b"\xff" * 4 + b"\x00\x01" + b"ab",  # trailing byte
        b"\x00\x01" + b"\xff" * 4 + b"\x00\x02" + b"\xc3\x28",  # invalid UTF-8
    ],
)
def test_malformed_errors(header):
    assert_framing_error(frame(0x06, header))


def test_events_before_a_violation_are_delivered():
    events = assert_framing_error(to_bytes(Have(1)) + b"\x99" + bytes(4))
    assert events == [("msg", Have(1))]


@settings(max_examples=500)
@given(st.binary(max_size=400), st.data())
def test_random_bytes_raise_only_framing_errors(data, draw):
    sink = Recorder()
    decoder = Decoder(sink, max_payload=200)
    try:
        for chunk in draw.draw(chunkings(data)):
            decoder.feed(chunk)
    except FramingError:
        pass


@given(frames, st.data())
def test_corrupted_frames_raise_only_framing_errors(frame_, data):
    raw = bytearray(to_bytes(*frame_))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        raw[data.draw(st.integers(min_value=0, max_value=len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        decode(bytes(raw), max_payload=1000)
    except FramingError:
        pass


@given(frames, st.data())
def test_truncated_headers_with_a_lying_length_fail(frame_, data):
    msg, _ = frame_
    raw = wire.encode_header(msg)
    header = raw[5:]
    assume(len(header) > 0)
    cut = data.draw(st.integers(min_value=0, max_value=len(header) - 1))
    # The length prefix matches the truncated header, so the decoder sees a complete but short header.
    short = frame(raw[0], header[:cut])
    assert_framing_error(short)


def test_import_does_not_pull_in_the_reactor():
    code = (
        "import sys, kraken.p2p.wire, kraken.p2p.session; "
        "assert 'twisted.internet.reactor' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
