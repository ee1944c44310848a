"""A sha512 blob on the wire: version 2 handshakes (a 64-byte digest); sha256 blobs stay version 1."""

import struct

import pytest
from test_session import TIMEOUTS, FakeConnection, Observer
from test_wire import Recorder, to_bytes
from twisted.internet import task

from kraken.core import Bitfield, Digest, MetaInfo
from kraken.p2p import wire
from kraken.p2p.session import PeerSession, State
from kraken.p2p.wire import Decoder, Error, ErrorCode, FramingError, Handshake

BLOB = bytes(range(256)) * 10
META = MetaInfo.from_bytes(BLOB, 1024, "sha512")
INFO_HASH = bytes.fromhex(META.info_hash)
DIGEST = Digest.from_bytes(BLOB, "sha512").raw
LOCAL, REMOTE = b"L" * 20, b"R" * 20


def decode(data):
    sink = Recorder()
    Decoder(sink).feed(data)
    return sink.events


def test_a_version_2_handshake_round_trips_with_its_64_byte_digest():
    msg = Handshake(REMOTE, INFO_HASH, "ns", DIGEST, Bitfield(3, [1]), wire.SHA512_WIRE_VERSION)
    data = to_bytes(msg)
    assert data[5:7] == b"\x00\x02"
    assert data[5 + 2 + 1 + 20 + 32 + 2 + 2 :][:64] == DIGEST
    assert decode(data) == [("msg", msg)]
    assert wire.version_for(DIGEST) == 2 and wire.version_for(DIGEST[:32]) == 1


def test_each_version_holds_to_its_digest_length():
    with pytest.raises(ValueError):
        Handshake(REMOTE, INFO_HASH, "ns", DIGEST, Bitfield(3))  # a 64-byte digest in version 1
    v1 = to_bytes(Handshake(REMOTE, INFO_HASH, "ns", DIGEST[:32], Bitfield(3)))
    as_v2 = v1[:5] + b"\x00\x02" + v1[7:]  # a version 2 header with a 32-byte digest: short by 32 bytes
    with pytest.raises(FramingError):
        decode(as_v2)
    longer = struct.pack(">BI", 0x01, len(v1) - 5 + 32) + b"\x00\x01" + v1[7:] + b"\x00" * 32
    with pytest.raises(FramingError):
        decode(longer)  # a version 1 header with room for a 64-byte digest


def session(initiator):
    conn = FakeConnection()
    s = PeerSession(conn, Observer(), clock=task.Clock(), metainfo=META, namespace="ns", peer_id=LOCAL,
                    bitfield=Bitfield(3, [0]), initiator=initiator, **TIMEOUTS)  # fmt: skip
    return s, conn


def test_a_sha512_torrent_speaks_version_2_and_opens_with_a_version_2_peer():
    s, conn = session(initiator=True)
    s.start()
    assert conn.sent == [Handshake(LOCAL, INFO_HASH, "ns", DIGEST, Bitfield(3, [0]), 2)]
    s.on_message(Handshake(REMOTE, INFO_HASH, "ns", DIGEST, Bitfield(3, [1, 2]), 2))
    assert s.state is State.OPEN


def test_a_version_1_peer_of_a_sha512_torrent_is_refused_as_another_version():
    s, conn = session(initiator=False)
    s.start()
    s.on_message(Handshake(REMOTE, INFO_HASH, "ns", DIGEST[:32], Bitfield(3, [1, 2])))
    assert s.state is not State.OPEN
    [refusal] = [m for m in conn.sent if isinstance(m, Error)]
    assert refusal.code == ErrorCode.UNSUPPORTED_VERSION
