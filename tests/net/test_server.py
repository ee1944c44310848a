"""make_site: plain HTTP that refuses a TLS handshake at once, and spools large bodies."""

import os

from manual_worker import ManualWorker
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
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


def test_a_path_that_is_not_utf8_is_refused_without_reaching_the_resource():
    # Found by the adversarial suite: Klein logged a traceback for each such request.
    proto, transport = connect()
    proto.dataReceived(b"GET /hello/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 Bad Request")
    assert transport.value().endswith(b"the request path is not UTF-8\n")
    proto.connectionLost(None)


def test_a_host_that_is_not_utf8_is_refused_too():
    proto, transport = connect()
    proto.dataReceived(b"GET /hello HTTP/1.1\r\nHost: \xff\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 Bad Request")
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
    from kraken.store.spool import BodySpool
    from kraken.workers import InlineWorker

    made = []

    def factory(line=None, **flow):
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


# -- a body the spool cannot write (a full disk) ------------------------------------------------------------------

from full_disk import FillingFile, Room  # noqa: E402
from twisted.internet.interfaces import ITCPTransport  # noqa: E402
from twisted.internet.testing import MemoryReactorClock as _Clock  # noqa: E402
from zope.interface import implementer  # noqa: E402

from kraken.net.server import LINGER, Refusal  # noqa: E402


@implementer(ITCPTransport)
class TCPStringTransport(StringTransport):
    """A StringTransport that half-closes like TCP."""

    write_closed = False
    aborted = False

    def setTcpNoDelay(self, enabled):
        pass

    def loseWriteConnection(self):
        self.write_closed = True

    def abortConnection(self):
        self.aborted = True
        self.disconnecting = True


def full_disk_site(tmp_path, *, room, worker=None, transport=None):
    """A spooling site whose spool files hold ``room`` bytes; ``refusals`` records what body_refused was asked."""
    from kraken.store.spool import BodySpool
    from kraken.workers import InlineWorker

    made, refusals = [], []

    def factory(line=None, **flow):
        s = BodySpool(str(tmp_path), worker or InlineWorker(), **flow)
        s._file = FillingFile(s._file, Room(room))
        made.append(s)
        return s

    def refused(method, path, failure):
        refusals.append((method, path, failure.value.errno))
        return Refusal(507, [(b"Content-Type", b"text/plain")], b"no space left on device\n")

    echo = Echo()
    clock = _Clock()
    site = make_site(echo, reactor=clock, spool=factory, body_refused=refused)
    proto = site.buildProtocol(None)
    transport = transport or TCPStringTransport()
    proto.makeConnection(transport)
    return proto, transport, echo, made, refusals, clock


def test_a_body_that_fills_the_disk_while_the_connection_is_paused_is_answered_at_once(tmp_path):
    import errno

    worker = ManualWorker()
    proto, transport, echo, made, refusals, clock = full_disk_site(tmp_path, room=1000, worker=worker)
    size = 100 << 20
    proto.dataReceived(b"PATCH /up/1 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
    sent = 0
    while transport.producerState != "paused":  # the client sends until the spool's backlog pauses it
        proto.dataReceived(b"\x00" * 65536)
        sent += 65536
    assert sent < size
    assert transport.value() == b"", "nothing answered yet"
    worker.step()  # the backlog meets the full disk
    [spool] = made
    assert refusals == [(b"PATCH", b"/up/1", errno.ENOSPC)]
    wire = transport.value()
    assert wire.startswith(b"HTTP/1.1 507 Insufficient Storage Space\r\n")
    assert b"\r\nConnection: close\r\n" in wire
    assert wire.endswith(b"\r\n\r\nno space left on device\n")
    assert echo.seen == [], "the handler never ran"
    assert not os.path.exists(spool.path)
    assert os.listdir(tmp_path) == []
    # The answer is out; the sending side is shut, and the rest of the body is read and dropped, so the
    # client reads the answer instead of a reset.
    assert transport.write_closed and not transport.disconnecting
    assert transport.producerState == "producing", "the paused connection was resumed"
    proto.dataReceived(b"\x00" * 65536)
    assert worker.jobs == [] and transport.value() == wire
    clock.advance(LINGER)
    assert transport.aborted, "a client that does not close is cut off after the linger"
    proto.connectionLost(Failure(ConnectionDone()))
    assert not [c for c in clock.getDelayedCalls() if c.active()]


def test_a_client_that_closes_after_the_answer_leaves_no_timer(tmp_path):
    proto, transport, _echo, _made, refusals, clock = full_disk_site(tmp_path, room=1000)
    proto.dataReceived(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (4 << 20))
    proto.dataReceived(b"\x01" * 5000)
    assert len(refusals) == 1
    assert transport.value().startswith(b"HTTP/1.1 507 ")
    proto.connectionLost(Failure(ConnectionDone()))
    assert not transport.aborted
    assert not [c for c in clock.getDelayedCalls() if c.active()]
    assert os.listdir(tmp_path) == []


def test_a_flush_that_fails_after_the_whole_body_is_answered_too(tmp_path):
    worker = ManualWorker()
    proto, transport, echo, _made, refusals, clock = full_disk_site(tmp_path, room=10, worker=worker)
    body = b"z" * (2 << 20)
    proto.dataReceived(b"PUT /x?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert transport.value() == b""
    while worker.jobs:
        worker.step()
    assert [(m, p) for m, p, _ in refusals] == [(b"PUT", b"/x?a=1")]
    assert transport.value().startswith(b"HTTP/1.1 507 ")
    assert echo.seen == []
    proto.connectionLost(Failure(ConnectionDone()))
    assert not [c for c in clock.getDelayedCalls() if c.active()]
    assert os.listdir(tmp_path) == []


def test_without_half_close_the_connection_is_closed_after_the_answer(tmp_path):
    proto, transport, _echo, _made, _refusals, clock = full_disk_site(tmp_path, room=1000, transport=StringTransport())
    proto.dataReceived(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (4 << 20))
    proto.dataReceived(b"\x01" * 5000)
    assert transport.value().startswith(b"HTTP/1.1 507 ")
    assert transport.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))
    assert not [c for c in clock.getDelayedCalls() if c.active()]
