"""make_site: plain HTTP that refuses a TLS handshake at once."""

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
