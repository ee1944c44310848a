"""PeerProtocol over StringTransportWithDisconnection and iosim: no reactor; one real socket for its option."""

import socket
import subprocess
import sys

import pytest
from twisted.internet import task
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kraken.core import Bitfield, MetaInfo
from kraken.p2p.protocol import NOTSENT_LOWAT, PeerFactory, PeerProtocol, bound_unsent
from kraken.p2p.session import IPeerConnection, IPeerSessionObserver, PeerDisconnected, State
from kraken.p2p.wire import Decoder, Error, ErrorCode, Handshake, Message, Piece, PieceRequest, encode

BLOB = bytes(range(256)) * 10  # 2560 bytes: pieces of 1024, 1024 and 512
META = MetaInfo.from_bytes(BLOB, 1024)
INFO_HASH = bytes.fromhex(META.info_hash)
DIGEST = bytes.fromhex(META.digest.hex)
LOCAL_ID = b"L" * 20
REMOTE_ID = b"R" * 20


@implementer(IPeerSessionObserver)
class Observer:
    """Records events; with ``blob``, answers every request with the piece."""

    def __init__(self, blob=None):
        self.events = []
        self.blob = blob

    def piece_requested(self, session, index):
        self.events.append(("requested", index))
        if self.blob is not None:
            start = index * META.piece_length
            session.send_piece(index, memoryview(self.blob)[start : start + META.piece_size(index)])

    def piece_cancelled(self, session, index):
        self.events.append(("cancelled", index))

    def peer_has(self, session, index):
        self.events.append(("has", index))

    def peer_complete(self, session):
        self.events.append(("complete",))


class Frames:
    """A WireSink that records what the protocol wrote."""

    def __init__(self):
        self.items = []

    def on_message(self, msg):
        self.items.append(msg)

    def on_payload(self, index, chunk):
        self.items.append(bytes(chunk))

    def on_payload_end(self, index):
        self.items.append(("end", index))


def written(transport):
    frames = Frames()
    Decoder(frames).feed(transport.value())
    transport.clear()
    return frames.items


def result_of(d):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def factory(observer=None, *, clock, peer_id=LOCAL_ID, bitfield=None, initiator=True):
    return PeerFactory(
        observer if observer is not None else Observer(),
        clock=clock,
        metainfo=META,
        namespace="library",
        peer_id=peer_id,
        bitfield=bitfield if bitfield is not None else Bitfield(3, [0]),
        initiator=initiator,
        handshake_timeout=5.0,
        idle_timeout=60.0,
        request_timeout=30.0,
    )


def connected(observer=None, **kwargs):
    clock = task.Clock()
    proto = factory(observer, clock=clock, **kwargs).buildProtocol(None)
    transport = StringTransportWithDisconnection()
    transport.protocol = proto
    proto.makeConnection(transport)
    return proto, transport, clock


def remote_handshake():
    return Handshake(REMOTE_ID, INFO_HASH, "library", DIGEST, Bitfield(3, [1, 2]))


def wire_bytes(msg: Message, payload=b"") -> bytes:
    return b"".join(bytes(part) for part in encode(msg, payload))


def feed(proto, data, step):
    if step is None:
        proto.dataReceived(data)
        return
    for i in range(0, len(data), step):
        proto.dataReceived(data[i : i + step])


STEPS = pytest.mark.parametrize("step", [None, 1], ids=["whole", "byte-by-byte"])


def test_provides_ipeerconnection():
    proto, _, _ = connected()
    verifyObject(IPeerConnection, proto)
    assert isinstance(proto, PeerProtocol)


def test_decoder_payload_limit_is_the_piece_length():
    proto, _, _ = connected()
    assert proto._decoder.max_payload == META.piece_length == proto.session.max_payload


@STEPS
def test_handshake_then_piece_request_and_response(step):
    proto, transport, _ = connected()
    [hello] = written(transport)  # the initiator speaks first on connectionMade
    assert isinstance(hello, Handshake) and hello.peer_id == LOCAL_ID

    feed(proto, wire_bytes(remote_handshake()), step)
    assert result_of(proto.session.when_handshaken()).peer_id == REMOTE_ID
    assert proto.session.state is State.OPEN

    received = []
    d = proto.session.request_piece(1, lambda chunk: received.append(bytes(chunk)))
    assert written(transport) == [PieceRequest(1)]
    feed(proto, wire_bytes(Piece(1, 1024), BLOB[1024:2048]), step)
    assert result_of(d) == 1024
    assert b"".join(received) == BLOB[1024:2048]
    assert transport.connected


@STEPS
def test_serves_a_requested_piece(step):
    observer = Observer(BLOB)
    proto, transport, _ = connected(observer, initiator=False, bitfield=Bitfield.full(3))
    assert transport.value() == b""  # the listener waits for the initiator
    feed(proto, wire_bytes(remote_handshake()), step)
    [hello] = written(transport)
    assert isinstance(hello, Handshake)

    feed(proto, wire_bytes(PieceRequest(2)), step)
    assert observer.events == [("requested", 2)]
    assert written(transport) == [Piece(2, 512), BLOB[2048:], ("end", 2)]


@STEPS
def test_malformed_bytes_close_with_a_violation(step):
    proto, transport, _ = connected()
    transport.clear()
    closed = []
    proto.session.when_closed().addBoth(closed.append)

    feed(proto, b"\xff\x00\x00\x00\x00 and more garbage", step)  # no exception escapes

    assert not transport.connected
    [error] = written(transport)
    assert isinstance(error, Error) and error.code is ErrorCode.PROTOCOL
    [result] = closed
    assert result.violation
    assert "unknown message type" in result.reason
    assert proto.session.state is State.CLOSED


def test_a_piece_above_the_payload_limit_is_a_violation():
    proto, transport, _ = connected()
    proto.dataReceived(wire_bytes(remote_handshake()))
    d = proto.session.request_piece(0, lambda chunk: None)
    failures = []
    d.addErrback(failures.append)
    transport.clear()

    # Only the header: the limit is checked before a payload byte is read.
    proto.dataReceived(wire_bytes(Piece(0, 1025), b"x" * 1025)[:13])

    assert not transport.connected
    closed = result_of(proto.session.when_closed())
    assert closed.violation and "exceeds the limit 1024" in closed.reason
    assert failures[0].check(PeerDisconnected)


def test_input_after_a_framing_error_is_ignored():
    proto, transport, _ = connected()
    proto.dataReceived(b"\xff\x00\x00\x00\x00")
    transport.clear()
    proto.dataReceived(wire_bytes(remote_handshake()))
    assert transport.value() == b""
    assert proto.session.state is State.CLOSED


def test_connection_lost_fails_pending_requests():
    proto, _, _ = connected()
    proto.dataReceived(wire_bytes(remote_handshake()))
    d0 = proto.session.request_piece(0, lambda chunk: None)
    d1 = proto.session.request_piece(2, lambda chunk: None)
    failures = []
    d0.addErrback(failures.append)
    d1.addErrback(failures.append)

    proto.connectionLost(Failure(ConnectionLost("reset by peer")))

    assert [f.check(PeerDisconnected) for f in failures] == [PeerDisconnected, PeerDisconnected]
    closed = result_of(proto.session.when_closed())
    assert not closed.violation
    assert "reset by peer" in closed.reason


def test_session_close_loses_the_connection():
    proto, transport, clock = connected()
    clock.advance(5.0)  # the handshake timeout
    assert not transport.connected
    assert result_of(proto.session.when_closed()).reason == "handshake timed out"
    assert not clock.getDelayedCalls()


def test_two_peers_exchange_a_piece_over_iosim():
    clock = task.Clock()
    seeder = Observer(BLOB)
    server_factory = factory(seeder, clock=clock, peer_id=REMOTE_ID, bitfield=Bitfield.full(3), initiator=False)
    client_factory = factory(clock=clock)
    server = server_factory.buildProtocol(None)
    client = client_factory.buildProtocol(None)

    pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), clock=clock)
    handshake = result_of(client.session.when_handshaken())
    assert handshake.peer_id == REMOTE_ID and handshake.bitfield == Bitfield.full(3)
    assert result_of(server.session.when_handshaken()).peer_id == LOCAL_ID

    received = []
    d = client.session.request_piece(1, lambda chunk: received.append(bytes(chunk)))
    pump.flush()
    assert result_of(d) == 1024
    assert b"".join(received) == BLOB[1024:2048]
    assert seeder.events == [("requested", 1)]

    client.session.close("done")
    pump.flush()
    assert result_of(client.session.when_closed()).reason == "done"
    assert server.session.state is State.CLOSED
    for call in clock.getDelayedCalls():
        assert not call.active()


def test_importing_does_not_import_the_reactor():
    code = "import sys, kraken.p2p.protocol; assert 'twisted.internet.reactor' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_when_writable_follows_the_transport_producer():
    proto, transport, _ = connected()
    assert transport.producer is not None and transport.streaming
    assert result_of(proto.when_writable()) is None  # nothing buffered yet

    transport.producer.pauseProducing()  # what a TCP transport does once its buffer passes bufferSize
    waited = []
    proto.when_writable().addBoth(waited.append)
    assert waited == []
    transport.producer.resumeProducing()
    assert waited == [None]


def test_when_writable_fails_once_the_connection_is_lost():
    proto, transport, _ = connected()
    transport.producer.pauseProducing()
    waited = []
    proto.when_writable().addBoth(waited.append)

    transport.loseConnection()

    [failure] = waited
    assert failure.check(PeerDisconnected)
    assert result_of(proto.when_writable()).check(PeerDisconnected)


class _TCPTransport:
    """A transport whose socket is a real TCP socket (what Twisted's TCP transports give ``getHandle``)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def getHandle(self) -> socket.socket:
        return self._sock


def test_p2p_sockets_bound_their_unsent_bytes():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert bound_unsent(_TCPTransport(sock)) is True
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == NOTSENT_LOWAT


def test_transports_without_a_tcp_socket_are_left_alone():
    assert bound_unsent(StringTransportWithDisconnection()) is False  # no socket at all
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        assert bound_unsent(_TCPTransport(sock)) is False  # not TCP: the kernel refuses the option
