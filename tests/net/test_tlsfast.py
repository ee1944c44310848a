"""kraken.net.tlsfast: the TLS layer's whole writes and joined reads keep Twisted's semantics (bytes in
order, close_notify, producers paused and resumed, errors), on real TLS sockets on loopback."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
import pytest_twisted
import treq
import trustme
from OpenSSL import SSL
from tls_files import write_ca, write_pair
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported
from twisted.web.resource import Resource
from twisted.web.static import Data

from kraken.net import HTTPClientConfig, TLSConfig, TLSContexts, make_http_client
from kraken.net.server import listen_http, make_site, port_address
from kraken.net.tls import AgentEndpoints, TLSClientEndpoint, TLSServerFactory
from kraken.net.tlsfast import READ_SIZE, BulkTLS

MIB = 1 << 20


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def contexts(tmp_path: Any, ca: trustme.CA) -> TLSContexts:
    """A daemon's contexts: its certificate, the cluster CA trusted, client certificates required."""
    cert, key = write_pair(tmp_path / "pair", ca, "daemon")
    trusted = write_ca(tmp_path / "pair", ca)
    return TLSContexts(TLSConfig(ca=trusted, cert=cert, key=key, client_ca=trusted, require_client_cert=True))


def pem(path: str | None) -> str:
    assert path is not None
    with open(path) as f:
        return f.read()


def payload(size: int) -> bytes:
    return os.urandom(size)


class Collect(Protocol):
    """Records what arrives, in how many calls, and why the connection ended."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.first: Deferred[None] = Deferred()
        self.lost: Deferred[Any] = Deferred()
        self._waits: list[tuple[int, Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if not self.first.called:
            self.first.callback(None)
        done = [d for n, d in self._waits if self.size >= n]
        self._waits = [(n, d) for n, d in self._waits if self.size < n]
        for d in done:
            d.callback(None)

    def received(self, size: int) -> Deferred[None]:
        """Fires once ``size`` bytes in all have arrived."""
        d: Deferred[None] = Deferred()
        if self.size >= size:
            d.callback(None)
        else:
            self._waits.append((size, d))
        return d

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback([reason])

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class Send(Protocol):
    """Writes ``blocks`` (before the handshake is done: the layer buffers them) then closes, or not."""

    def __init__(self, blocks: list[bytes], close: bool = True) -> None:
        self.blocks = blocks
        self.close = close
        self.lost: Deferred[Any] = Deferred()

    def connectionMade(self) -> None:
        for block in self.blocks:
            self.transport.write(block)
        if self.close:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback([reason])


async def connect(reactor: Any, server: Protocol, client: Protocol, tls: TLSContexts, creator: Any = None) -> Any:
    """A TLS listener (``TLSServerFactory``) serving ``server`` once, and ``client`` dialled to it."""
    factory = TLSServerFactory(tls.http_server(), Factory.forProtocol(lambda: server), "test")
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        inner = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        endpoint = TLSClientEndpoint(creator or tls.client_creator("127.0.0.1"), inner)
        await endpoint.connect(Factory.forProtocol(lambda: client))
    finally:
        await port.stopListening()
    return factory


@pytest_twisted.ensureDeferred
async def test_written_bytes_arrive_in_order_before_a_clean_close(reactor, tmp_path, ca):
    blocks = [payload(n) for n in (5, 3 * MIB + 1, 17, 2 * MIB)]
    server, client = Collect(), Send(blocks)
    await connect(reactor, server, client, contexts(tmp_path, ca))
    assert (await server.lost)[0].check(ConnectionDone)  # close_notify came after the last byte
    assert (await client.lost)[0].check(ConnectionDone)
    assert server.data == b"".join(blocks)
    # Records decrypted from one read reach the protocol together: far fewer calls than 16 KB records.
    assert len(server.chunks) < len(server.data) // (1 << 14) // 2


@pytest_twisted.ensureDeferred
async def test_both_ends_write_whole_chunks_and_read_big_only_for_bulk(reactor, tmp_path, ca):
    server, client = Collect(), Send([b"x"], close=False)
    factory = await connect(reactor, server, client, contexts(tmp_path, ca))
    ends = [client.transport, *factory.protocols]
    assert all(isinstance(end, BulkTLS) for end in ends)
    assert all(end._whole for end in ends)  # our contexts (server and client) take whole writes
    # Small messages: Twisted's 64 KB reads.
    assert all(end.transport.bufferSize < READ_SIZE for end in ends)
    # A bulk transfer fills a read: the receiving end reads bigger from then on.
    client.transport.write(payload(4 * MIB))
    await server.received(4 * MIB + 1)
    [receiver] = factory.protocols
    assert receiver.transport.bufferSize == READ_SIZE
    client.transport.loseConnection()
    await server.lost


@pytest_twisted.ensureDeferred
async def test_a_context_with_partial_writes_still_gets_every_byte(reactor, tmp_path, ca):
    tls = contexts(tmp_path, ca)
    # Twisted's own client options: pyOpenSSL's partial writes stay on, so writes go out a record at a time.
    creator = ssl.optionsForClientTLS(
        "127.0.0.1",
        trustRoot=ssl.Certificate.loadPEM(ca.cert_pem.bytes()),
        clientCertificate=ssl.PrivateCertificate.loadPEM(pem(tls.config.cert) + pem(tls.config.key)),
    )
    blocks = [payload(MIB + 3), payload(1 << 14), payload(10)]
    server, client = Collect(), Send(blocks)
    await connect(reactor, server, client, tls, creator)
    assert (await server.lost)[0].check(ConnectionDone)
    assert client.transport is None or not client.transport._whole
    assert server.data == b"".join(blocks)


class Producing(Protocol):
    """Writes ``total`` bytes from a streaming producer, a MiB at a time, while it is not paused."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.sent = hashlib.sha256()
        self.paused = False
        self.pauses = 0
        self.lost: Deferred[Any] = Deferred()

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        while self.left and not self.paused:
            block = payload(min(MIB, self.left))
            self.left -= len(block)
            self.sent.update(block)
            self.transport.write(block)
        if not self.left and self.transport is not None and self.transport.connected:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def stopProducing(self) -> None:
        self.left = 0

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback([reason])


class Slow(Collect):
    """Pauses its transport after each read and resumes it on the next reactor turn."""

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.pauseProducing()
        self.reactor.callLater(0, self.transport.resumeProducing)


@pytest_twisted.ensureDeferred
async def test_a_producer_is_paused_and_resumed_and_every_byte_arrives(reactor, tmp_path, ca):
    server, client = Slow(reactor), Producing(24 * MIB)
    await connect(reactor, server, client, contexts(tmp_path, ca))
    assert (await server.lost)[0].check(ConnectionDone)
    assert client.pauses > 0  # first by the TLS layer's buffer before the handshake, then by TCP
    assert hashlib.sha256(server.data).digest() == client.sent.digest()


@pytest_twisted.ensureDeferred
async def test_a_corrupt_record_ends_the_connection_with_the_tls_error(reactor, tmp_path, ca):
    server, client = Collect(), Send([b"before"], close=False)
    await connect(reactor, server, client, contexts(tmp_path, ca))
    await server.first
    # An application-data record whose tag cannot verify, straight on the TCP connection.
    client.transport.transport.write(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
    (reason,) = await server.lost
    assert reason.check(SSL.Error)
    assert server.data == b"before"
    client.transport.loseConnection()
    await client.lost


class PauseAtFirst(Collect):
    """Stops reading once the first bytes are in (until the test resumes it)."""

    def dataReceived(self, data: bytes) -> None:
        if not self.chunks:
            self.transport.pauseProducing()
        super().dataReceived(data)


@pytest_twisted.ensureDeferred
async def test_a_close_ends_the_connection_while_the_peer_does_not_read(reactor, tmp_path, ca):
    server, client = PauseAtFirst(), Send([b"first"], close=False)
    await connect(reactor, server, client, contexts(tmp_path, ca))
    await server.first
    rest = payload(200_000)
    client.transport.write(rest)
    client.transport.loseConnection()  # no close_notify will come back while the server is paused
    await client.lost  # closed all the same (as TCP closes), without the peer's close_notify
    server.transport.resumeProducing()
    await server.lost
    # What the server read is what was sent, in order; the tail may be lost to a TCP reset (seen here with
    # Twisted's own TLS layer too: a socket closed with received bytes unread is reset, as in plain TCP).
    assert (b"first" + rest).startswith(server.data) and server.data.startswith(b"first")


# --------------------------------------------------------------------------- through the HTTP client


class Echo(Resource):
    isLeaf = True

    def render_PUT(self, request: Any) -> bytes:
        return hashlib.sha256(request.content.read()).hexdigest().encode()


@pytest_twisted.ensureDeferred
async def test_the_http_client_uploads_and_downloads_over_our_tls_layer(reactor, tmp_path, ca):
    tls = contexts(tmp_path, ca)
    blob = payload(5 * MIB + 7)
    root = Resource()
    root.putChild(b"echo", Echo())
    root.putChild(b"blob", Data(blob, "application/octet-stream"))
    site = make_site(root, reactor=reactor, access_log=False)
    site.timeOut = None
    service = listen_http("tcp:0:interface=127.0.0.1", site, reactor=reactor, component="test", tls=tls.http_server())
    service.startService()
    url = "https://" + port_address(await service._waitingForPort)
    client, pool = make_http_client(reactor, HTTPClientConfig(), tls=tls)
    try:
        response = await client.put(url + "/echo", data=blob)
        assert (await treq.content(response)).decode() == hashlib.sha256(blob).hexdigest()
        response = await client.get(url + "/blob")
        assert await treq.content(response) == blob
        connections = [c for cs in pool.pool._connections.values() for c in cs]
        assert connections and all(isinstance(c.transport, BulkTLS) for c in connections)
    finally:
        await pool.pool.closeCachedConnections()
        await service.stopService()


def test_agent_endpoints_are_plain_for_http_and_refuse_other_schemes(reactor, tmp_path, ca):
    endpoints = AgentEndpoints(reactor, contexts(tmp_path, ca).policy(), 5.0)
    assert isinstance(endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:1/x")), HostnameEndpoint)
    assert isinstance(endpoints.endpointForURI(URI.fromBytes(b"https://127.0.0.1:1/x")), TLSClientEndpoint)
    with pytest.raises(SchemeNotSupported):
        endpoints.endpointForURI(URI.fromBytes(b"ftp://127.0.0.1:1/x"))
