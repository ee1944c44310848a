"""make_site: plain HTTP that refuses a TLS handshake at once, and spools large bodies."""

import os

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import Resource
from twisted.web.static import Data

from kraken.net.server import PlainHTTPChannel, make_site


def connect():
    root = Resource()
    root.putChild(b"hello", Data(b"hi", "text/plain"))
    site = make_site(root, reactor=MemoryReactorClock())
    proto = site.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_tls_client_hello_gets_400_and_close():
    proto, transport = connect()
    assert isinstance(proto, PlainHTTPChannel)
    proto.dataReceived(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40)
    assert transport.value().startswith(b"HTTP/1.0 400 Bad Request\r\n")
    assert transport.disconnecting


def test_plain_http_still_served():
    proto, transport = connect()
    proto.dataReceived(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK")
    assert transport.value().endswith(b"hi")
    assert not transport.disconnecting
    proto.connectionLost(None)


def test_only_the_first_bytes_are_inspected():
    proto, transport = connect()
    proto.dataReceived(b"GET /hello HTTP/1.1\r\n")
    proto.dataReceived(b"\x16\x03: x\r\n\r\n")  # odd header bytes later are HTTP's business
    assert not transport.value().startswith(b"HTTP/1.0 400")
    proto.connectionLost(None)


class Echo(Resource):
    """Answers with what it saw of the request body."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.seen = []

    def render_PUT(self, request):
        body = request.content.read()
        self.seen.append((type(request.content).__name__, len(body), body[:4], body[-4:]))
        return b"%d" % len(body)


def spooling_site(tmp_path):
    from kraken.store import InlineWorker
    from kraken.store.spool import BodySpool

    made = []

    def factory(**flow):
        s = BodySpool(str(tmp_path), InlineWorker(), **flow)
        made.append(s)
        return s

    echo = Echo()
    site = make_site(echo, reactor=MemoryReactorClock(), spool=factory)
    proto = site.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, echo, made


def test_large_bodies_are_spooled_and_seen_whole(tmp_path):
    proto, transport, echo, made = spooling_site(tmp_path)
    body = b"head" + b"\x00" * (3 << 20) + b"tail"
    proto.dataReceived(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
    for i in range(0, len(body), 65536):
        proto.dataReceived(body[i : i + 65536])
    assert echo.seen == [("BodySpool", len(body), b"head", b"tail")]
    assert transport.value().startswith(b"HTTP/1.1 200 OK")
    [spool] = made
    assert not os.path.exists(spool.path), "the spool file goes when the request ends"
    proto.connectionLost(None)


def test_chunked_bodies_of_unknown_length_are_spooled(tmp_path):
    proto, _transport, echo, made = spooling_site(tmp_path)
    proto.dataReceived(b"PUT /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    proto.dataReceived(b"4\r\nhead\r\n4\r\ntail\r\n0\r\n\r\n")
    assert echo.seen == [("BodySpool", 8, b"head", b"tail")]
    assert len(made) == 1
    proto.connectionLost(None)


def test_small_bodies_are_not_spooled(tmp_path):
    proto, _transport, echo, made = spooling_site(tmp_path)
    proto.dataReceived(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
    assert echo.seen == [("BytesIO", 4, b"body", b"body")]
    assert made == []
    proto.connectionLost(None)


def test_a_dropped_upload_leaves_no_spool_file(tmp_path):
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure

    proto, _transport, echo, made = spooling_site(tmp_path)
    proto.dataReceived(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 << 20))
    proto.dataReceived(b"\x01" * 1000)
    proto.connectionLost(Failure(ConnectionLost()))
    [spool] = made
    assert echo.seen == []
    assert not os.path.exists(spool.path)
