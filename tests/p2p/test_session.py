"""PeerSession without a reactor: a fake IPeerConnection, task.Clock for the timers."""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kraken.core import Bitfield, MetaInfo
from kraken.p2p import wire
from kraken.p2p.session import (
    Closed,
    IPeerConnection,
    IPeerSessionObserver,
    PeerDisconnected,
    PeerSession,
    PieceRequestFailed,
    SessionNotOpen,
    State,
)
from kraken.p2p.wire import (
    Cancel,
    Complete,
    Error,
    ErrorCode,
    FramingError,
    Handshake,
    Have,
    Piece,
    PieceRequest,
    UnsupportedVersion,
)

BLOB = bytes(range(256)) * 10  # 2560 bytes: pieces of 1024, 1024 and 512
META = MetaInfo.from_bytes(BLOB, 1024)
INFO_HASH = bytes.fromhex(META.info_hash)
DIGEST = bytes.fromhex(META.digest.hex)
LOCAL_ID = b"L" * 20
REMOTE_ID = b"R" * 20
# The session takes its timeouts from its caller (P2PConfig in the daemons); these are the tests'.
HANDSHAKE_TIMEOUT = 5.0
IDLE_TIMEOUT = 60.0
REQUEST_TIMEOUT = 30.0
TIMEOUTS = {"handshake_timeout": HANDSHAKE_TIMEOUT, "idle_timeout": IDLE_TIMEOUT, "request_timeout": REQUEST_TIMEOUT}


@implementer(IPeerConnection)
class FakeConnection:
    def __init__(self):
        self.sent = []
        self.closed_with = None

    def send(self, msg, payload=b""):
        self.sent.append((msg, bytes(payload)) if payload else msg)

    def close(self, reason):
        self.closed_with = reason


@implementer(IPeerSessionObserver)
class Observer:
    def __init__(self):
        self.events = []

    def piece_requested(self, session, index):
        self.events.append(("requested", index))

    def piece_cancelled(self, session, index):
        self.events.append(("cancelled", index))

    def peer_has(self, session, index):
        self.events.append(("has", index))

    def peer_complete(self, session):
        self.events.append(("complete",))


def result_of(d):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def make(initiator=True, clock=None, **kwargs):
    conn = FakeConnection()
    observer = Observer()
    clock = clock or task.Clock()
    session = PeerSession(
        conn,
        observer,
        clock=clock,
        metainfo=META,
        namespace="library",
        peer_id=LOCAL_ID,
        bitfield=kwargs.pop("bitfield", Bitfield(3, [0])),
        initiator=initiator,
        **{**TIMEOUTS, **kwargs},
    )
    return session, conn, observer, clock


def remote_handshake(**overrides):
    fields = {
        "peer_id": REMOTE_ID,
        "info_hash": INFO_HASH,
        "namespace": "library",
        "digest": DIGEST,
        "bitfield": Bitfield(3, [1, 2]),
    }
    fields.update(overrides)
    return Handshake(**fields)


def opened(initiator=True, **kwargs):
    session, conn, observer, clock = make(initiator, **kwargs)
    session.start()
    session.on_message(remote_handshake())
    assert session.state is State.OPEN
    conn.sent.clear()
    return session, conn, observer, clock


def deliver(session, index, payload, chunk=300):
    session.on_message(Piece(index, len(payload)))
    for i in range(0, len(payload), chunk):
        session.on_payload(index, payload[i : i + chunk])
    session.on_payload_end(index)


def test_the_fakes_provide_the_interfaces():
    verifyObject(IPeerConnection, FakeConnection())
    verifyObject(IPeerSessionObserver, Observer())


# --- handshake ----------------------------------------------------------------------------------------------


def test_initiator_speaks_first_and_opens_on_a_matching_answer():
    session, conn, _, clock = make(initiator=True)
    handshaken = session.when_handshaken()
    session.start()
    assert conn.sent == [Handshake(LOCAL_ID, INFO_HASH, "library", DIGEST, Bitfield(3, [0]))]
    assert not handshaken.called
    session.on_message(remote_handshake())
    assert session.state is State.OPEN
    assert result_of(handshaken) == remote_handshake()
    assert result_of(session.when_handshaken()) == remote_handshake()  # a fresh Deferred per caller
    assert session.remote_bitfield == Bitfield(3, [1, 2])
    assert [c for c in clock.getDelayedCalls() if c.active()]  # only the idle timer
    assert len(clock.getDelayedCalls()) == 1


def test_acceptor_answers_after_a_valid_handshake():
    session, conn, _, _ = make(initiator=False)
    session.start()
    assert conn.sent == []
    session.on_message(remote_handshake())
    assert conn.sent == [Handshake(LOCAL_ID, INFO_HASH, "library", DIGEST, Bitfield(3, [0]))]
    assert session.state is State.OPEN


def test_the_sent_bitfield_is_a_copy():
    bitfield = Bitfield(3)
    session, conn, _, _ = make(bitfield=bitfield)
    session.start()
    bitfield.set(2)
    assert conn.sent[0].bitfield == Bitfield(3)


@pytest.mark.parametrize(
    "overrides,code",
    [
        ({"info_hash": b"\x00" * 32}, ErrorCode.UNKNOWN_BLOB),
        ({"digest": b"\x00" * 32}, ErrorCode.UNKNOWN_BLOB),
        ({"namespace": "other"}, ErrorCode.UNKNOWN_BLOB),
        ({"bitfield": Bitfield(4)}, ErrorCode.UNKNOWN_BLOB),
        ({"peer_id": LOCAL_ID}, ErrorCode.UNKNOWN_BLOB),
        ({"version": 2}, ErrorCode.UNSUPPORTED_VERSION),
    ],
)
def test_bad_handshakes_close_with_an_error_and_a_violation(overrides, code):
    session, conn, _, _ = make(initiator=False)
    handshaken = session.when_handshaken()
    session.start()
    session.on_message(remote_handshake(**overrides))
    assert conn.sent[0].code is code
    assert len(conn.sent) == 1  # no handshake of ours
    assert conn.closed_with is not None
    assert session.state is State.CLOSING
    assert isinstance(result_of(handshaken).value, PeerDisconnected)
    session.connection_lost()
    closed = result_of(session.when_closed())
    assert closed.violation


def test_expected_peer_id():
    session, _, _, _ = make(expected_peer_id=b"X" * 20)
    session.start()
    session.on_message(remote_handshake())
    assert session.closed == Closed("bad handshake: unexpected peer id", violation=True)


def test_a_message_before_the_handshake_is_a_violation():
    session, conn, _, _ = make(initiator=False)
    session.start()
    session.on_message(Have(0))
    assert conn.sent[0].code is ErrorCode.PROTOCOL
    assert session.closed.violation


def test_an_error_instead_of_a_handshake_is_a_refusal():
    session, conn, _, _ = make()
    session.start()
    handshaken = session.when_handshaken()
    session.on_message(Error(ErrorCode.BUSY, None, "full"))
    assert session.closed == Closed("peer refused: BUSY: full", violation=False, refused=ErrorCode.BUSY)
    assert conn.closed_with is not None
    assert result_of(handshaken).value.refused is ErrorCode.BUSY


def test_handshake_timeout():
    session, conn, _, clock = make()
    handshaken = session.when_handshaken()
    session.start()
    clock.advance(HANDSHAKE_TIMEOUT - 0.1)
    assert conn.closed_with is None
    clock.advance(0.1)
    assert conn.closed_with == "handshake timed out"
    assert isinstance(result_of(handshaken).value, PeerDisconnected)
    assert not clock.getDelayedCalls()


def test_start_twice_is_an_error():
    session, _, _, _ = make()
    session.start()
    with pytest.raises(RuntimeError):
        session.start()


def test_bitfield_must_fit_the_blob():
    with pytest.raises(ValueError):
        make(bitfield=Bitfield(4))


# --- open -------------------------------------------------------------------------------------------------


def test_a_second_handshake_is_a_violation():
    session, conn, _, _ = opened()
    session.on_message(remote_handshake())
    assert session.closed.violation and conn.closed_with


def test_remote_requests_cancels_haves_and_complete_reach_the_observer():
    session, _, observer, _ = opened()
    session.on_message(PieceRequest(0))
    session.on_message(Cancel(0))
    session.on_message(Have(0))
    assert session.remote_bitfield == Bitfield(3, [0, 1, 2])
    session.on_message(Complete())
    assert observer.events == [("requested", 0), ("cancelled", 0), ("has", 0), ("complete",)]
    assert session.remote_bitfield.complete()


@pytest.mark.parametrize("msg", [PieceRequest(3), Have(3), Cancel(7), Piece(3, 512)])
def test_indexes_outside_the_blob_are_violations(msg):
    session, _, _, _ = opened()
    session.on_message(msg)
    assert session.closed.violation


def test_request_piece_streams_the_payload_and_fires_after_the_end():
    session, conn, _, clock = opened()
    chunks = []
    d = session.request_piece(1, chunks.append)
    assert conn.sent == [PieceRequest(1)]
    piece = BLOB[1024:2048]
    session.on_message(Piece(1, 1024))
    session.on_payload(1, piece[:1000])
    assert not d.called
    session.on_payload(1, piece[1000:])
    assert not d.called
    session.on_payload_end(1)
    assert result_of(d) == 1024
    assert b"".join(chunks) == piece
    assert len(clock.getDelayedCalls()) == 1  # the request timer is gone; the idle timer stays


def test_an_empty_piece():
    empty = MetaInfo.from_bytes(b"", 1024)
    conn, clock = FakeConnection(), task.Clock()
    session = PeerSession(
        conn,
        Observer(),
        clock=clock,
        metainfo=empty,
        namespace="",
        peer_id=LOCAL_ID,
        bitfield=Bitfield(1),
        initiator=True,
        **TIMEOUTS,
    )
    session.start()
    session.on_message(
        Handshake(REMOTE_ID, bytes.fromhex(empty.info_hash), "", bytes.fromhex(empty.digest.hex), Bitfield.full(1))
    )
    d = session.request_piece(0, lambda chunk: pytest.fail("no chunk expected"))
    session.on_message(Piece(0, 0))
    session.on_payload_end(0)
    assert result_of(d) == 0


def test_requests_need_an_open_session():
    session, _, _, _ = make()
    assert isinstance(result_of(session.request_piece(0, print)).value, SessionNotOpen)
    session.connection_lost("gone")
    assert isinstance(result_of(session.request_piece(0, print)).value, PeerDisconnected)


def test_request_checks_index_and_duplicates():
    session, _, _, _ = opened()
    with pytest.raises(IndexError):
        session.request_piece(3, print)
    session.request_piece(0, print)
    with pytest.raises(ValueError):
        session.request_piece(0, print)


def test_error_for_a_request_fails_it_and_keeps_the_connection():
    session, conn, _, _ = opened()
    d = session.request_piece(2, print)
    session.on_message(Error(ErrorCode.PIECE_UNAVAILABLE, 2, "not yet"))
    failure = result_of(d)
    assert failure.check(PieceRequestFailed)
    assert failure.value.code is ErrorCode.PIECE_UNAVAILABLE
    assert session.state is State.OPEN and conn.closed_with is None


def test_errors_that_close():
    session, conn, _, _ = opened()
    d = session.request_piece(2, print)
    session.on_message(Error(ErrorCode.PROTOCOL, None, "you broke it"))
    assert conn.closed_with == "peer closed: PROTOCOL: you broke it"
    assert not session.closed.violation
    assert result_of(d).check(PeerDisconnected)


def test_an_error_about_nothing_is_logged_and_ignored():
    session, conn, _, _ = opened()
    session.on_message(Error(ErrorCode.INTERNAL, None, "disk"))
    session.on_message(Error(ErrorCode.PIECE_UNAVAILABLE, 1, "never asked"))
    assert session.state is State.OPEN and conn.sent == []


def test_request_timeout_cancels_and_a_late_answer_is_discarded():
    session, conn, _, clock = opened()
    chunks = []
    d = session.request_piece(0, chunks.append)
    clock.advance(REQUEST_TIMEOUT)
    assert result_of(d).check(TimeoutError)
    assert conn.sent == [PieceRequest(0), Cancel(0)]
    deliver(session, 0, BLOB[:1024])
    assert chunks == [] and session.state is State.OPEN
    # Only one late answer is tolerated.
    session.on_message(Piece(0, 1024))
    assert session.closed.violation


def test_cancelling_a_request_sends_cancel():
    session, conn, _, _ = opened()
    d = session.request_piece(0, print)
    d.cancel()
    assert conn.sent == [PieceRequest(0), Cancel(0)]
    result_of(d)  # consume the CancelledError


def test_a_piece_that_has_started_to_arrive_does_not_time_out():
    session, conn, _, clock = opened(request_timeout=10, idle_timeout=60)
    chunks = []
    d = session.request_piece(0, chunks.append)
    clock.advance(9)
    session.on_message(Piece(0, 1024))
    session.on_payload(0, BLOB[:100])
    clock.advance(30)  # slow, but moving: the idle timeout, not the request timeout, watches it now
    session.on_payload(0, BLOB[100:1024])
    session.on_payload_end(0)
    assert result_of(d) == 1024
    assert b"".join(chunks) == BLOB[:1024]
    assert conn.sent == [PieceRequest(0)]


def test_requests_waiting_behind_a_piece_that_streams_in_do_not_time_out():
    """The request timeout runs only while the connection is quiet: a peer sending one piece after another at
    the pace of a slow link is busy, not unresponsive."""
    session, conn, _, clock = opened(request_timeout=10, idle_timeout=60)
    first, second = session.request_piece(0, print), session.request_piece(1, print)
    clock.advance(9)
    session.on_message(Piece(0, 1024))
    session.on_payload(0, BLOB[:100])
    clock.advance(20)  # piece 0 is slow; piece 1 waits behind it
    third = session.request_piece(2, print)  # asked while piece 0 streams: its time starts when that ends
    clock.advance(20)
    session.on_payload(0, BLOB[100:1024])
    session.on_payload_end(0)
    assert result_of(first) == 1024
    assert not second.called and not third.called
    clock.advance(9.5)  # a whole timeout afresh, from the end of piece 0
    assert not second.called and not third.called
    clock.advance(0.5)
    assert result_of(second).check(TimeoutError) and result_of(third).check(TimeoutError)
    assert conn.sent == [PieceRequest(0), PieceRequest(1), PieceRequest(2), Cancel(1), Cancel(2)]


def test_an_unwanted_piece_streaming_in_also_holds_the_request_timers():
    session, _, _, clock = opened(request_timeout=10, idle_timeout=60)
    dropped, waiting = session.request_piece(0, print), session.request_piece(1, print)
    dropped.cancel()
    result_of(dropped)  # consume the CancelledError
    clock.advance(5)
    session.on_message(Piece(0, 1024))  # the answer we no longer want: discarded, but the link is busy with it
    session.on_payload(0, BLOB[:1024])
    clock.advance(30)
    assert not waiting.called
    session.on_payload_end(0)
    clock.advance(9)
    assert not waiting.called
    clock.advance(1)
    assert result_of(waiting).check(TimeoutError)


def test_unrequested_piece_is_a_violation():
    session, conn, _, _ = opened()
    session.on_message(Piece(0, 1024))
    assert session.closed.violation and conn.sent[0].code is ErrorCode.PROTOCOL


def test_piece_of_the_wrong_length_is_a_violation():
    session, _, _, _ = opened()
    d = session.request_piece(2, print)
    session.on_message(Piece(2, 1024))  # the last piece is 512 bytes
    assert session.closed.violation
    assert result_of(d).check(PeerDisconnected)


def test_connection_lost_fails_everything_pending():
    session, _, _, clock = opened()
    closed = session.when_closed()
    requests = [session.request_piece(i, print) for i in range(3)]
    session.connection_lost("reset by peer")
    for d in requests:
        failure = result_of(d)
        assert failure.check(PeerDisconnected) and failure.value.reason == "reset by peer"
    assert result_of(closed) == Closed("reset by peer")
    assert result_of(session.when_closed()) == Closed("reset by peer")
    assert session.state is State.CLOSED
    assert not clock.getDelayedCalls()
    session.on_message(Have(0))  # ignored once closed
    session.connection_lost("again")
    assert session.closed == Closed("reset by peer")


def test_close_then_connection_lost_keeps_the_first_reason():
    session, conn, _, _ = opened()
    session.close("done")
    session.close("twice")
    assert conn.closed_with == "done"
    session.connection_lost("connection done")
    assert result_of(session.when_closed()) == Closed("done")


def test_idle_timeout_is_reset_by_traffic():
    session, conn, _, clock = opened(request_timeout=10 * IDLE_TIMEOUT)
    clock.advance(IDLE_TIMEOUT - 1)
    session.on_message(Have(0))
    clock.advance(IDLE_TIMEOUT - 1)
    assert conn.closed_with is None
    d = session.request_piece(1, print)
    session.on_message(Piece(1, 1024))
    clock.advance(IDLE_TIMEOUT - 1)
    session.on_payload(1, BLOB[:10])
    clock.advance(IDLE_TIMEOUT - 1)
    assert conn.closed_with is None
    clock.advance(1)
    assert conn.closed_with == "idle timeout"
    assert result_of(d).check(PeerDisconnected)


def test_sends_only_while_open():
    session, conn, _, _ = make()
    session.send_have(0)
    session.send_complete()
    session.send_unavailable(0)
    session.send_piece(0, BLOB[:1024])
    assert conn.sent == []
    session.start()
    session.on_message(remote_handshake())
    conn.sent.clear()
    session.send_have(0)
    session.send_complete()
    session.send_unavailable(1, "later")
    session.send_piece(2, BLOB[2048:])
    assert conn.sent == [
        Have(0),
        Complete(),
        Error(ErrorCode.PIECE_UNAVAILABLE, 1, "later"),
        (Piece(2, 512), BLOB[2048:]),
    ]
    with pytest.raises(ValueError):
        session.send_piece(0, b"short")


def test_framing_errors_are_answered():
    session, conn, _, _ = opened()
    session.framing_error(FramingError("unknown message type 0x99"))
    assert conn.sent == [Error(ErrorCode.PROTOCOL, None, "unknown message type 0x99")]
    assert session.closed.violation
    session, conn, _, _ = make(initiator=False)
    session.start()
    session.framing_error(UnsupportedVersion(2))
    assert conn.sent[0].code is ErrorCode.UNSUPPORTED_VERSION


# --- two sessions through the real codec ------------------------------------------------------------------


@implementer(IPeerConnection)
class Wire:
    """Encodes what one session sends and feeds it, one byte at a time, to the other side's decoder."""

    def __init__(self):
        self.peer = None
        self.decoder = None
        self.closed_with = None

    def send(self, msg, payload=b""):
        data = b"".join(bytes(p) for p in wire.encode(msg, payload))
        for i in range(len(data)):
            self.decoder.feed(data[i : i + 1])

    def close(self, reason):
        self.closed_with = reason


def test_two_sessions_exchange_a_piece_over_the_codec():
    clock = task.Clock()
    a_wire, b_wire = Wire(), Wire()
    a_obs, b_obs = Observer(), Observer()
    common = {"clock": clock, "metainfo": META, "namespace": "library", **TIMEOUTS}
    a = PeerSession(a_wire, a_obs, peer_id=LOCAL_ID, bitfield=Bitfield(3), initiator=True, **common)
    b = PeerSession(b_wire, b_obs, peer_id=REMOTE_ID, bitfield=Bitfield.full(3), initiator=False, **common)
    a_wire.decoder = wire.Decoder(b, max_payload=b.max_payload)
    b_wire.decoder = wire.Decoder(a, max_payload=a.max_payload)
    b.start()
    a.start()
    assert a.state is State.OPEN and b.state is State.OPEN
    assert a.remote_bitfield.complete() and b.remote_bitfield.count() == 0

    chunks = []
    d = a.request_piece(2, chunks.append)
    assert b_obs.events == [("requested", 2)]
    b.send_piece(2, BLOB[2048:])
    assert result_of(d) == 512
    assert hashlib.sha256(b"".join(chunks)).digest() == META.piece_sums[2]
    a.send_have(2)
    assert b.remote_bitfield == Bitfield(3, [2])


small_indexes = st.integers(min_value=0, max_value=4)
remote_messages = st.one_of(
    st.builds(PieceRequest, small_indexes),
    st.builds(Have, small_indexes),
    st.builds(Cancel, small_indexes),
    st.builds(Error, st.sampled_from(list(ErrorCode)), st.none() | small_indexes, st.text(max_size=5)),
    st.just(Complete()),
    st.just(remote_handshake()),
    st.tuples(small_indexes, st.sampled_from([0, 512, 1024])).map(lambda t: Piece(*t)),
)


@given(st.lists(remote_messages, max_size=12), st.sets(st.integers(min_value=0, max_value=2)), st.data())
def test_any_stream_from_the_peer_leaves_the_session_consistent(messages, requested, data):
    """Whatever the peer sends, the session raises nothing, every request ends exactly once, no timer is left."""
    session, _, _, clock = opened()
    requests = {i: session.request_piece(i, lambda chunk: None) for i in requested}
    outcomes = {i: [] for i in requested}
    for i, d in requests.items():
        d.addBoth(outcomes[i].append)
    decoder = wire.Decoder(session, max_payload=session.max_payload)
    for msg in messages:
        payload = b"x" * msg.length if isinstance(msg, Piece) else b""
        raw = b"".join(bytes(p) for p in wire.encode(msg, payload))
        for chunk in data.draw(st.lists(st.integers(1, 64), min_size=1)):
            decoder.feed(raw[:chunk])
            raw = raw[chunk:]
        if raw:
            decoder.feed(raw)
    clock.advance(REQUEST_TIMEOUT)
    session.connection_lost("end")
    assert session.state is State.CLOSED
    assert all(len(o) == 1 for o in outcomes.values())
    assert not clock.getDelayedCalls()
