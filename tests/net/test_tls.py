"""kraken.net.tls: the ``tls:`` block's checks at start, and real TLS listeners on loopback with treq clients."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import treq
import trustme
from tls_files import expired, write_ca, write_pair
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import capturedLogs, globalLogPublisher
from twisted.python import usage
from twisted.web.client import ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.static import Data
from zope.interface import implementer

from kraken.agent.config import AgentConfig
from kraken.config import ConfigError, build, from_mapping, load_or_usage_error
from kraken.net import HTTPClientConfig, ReloadOnSIGHUP, TLSConfig, TLSContexts, make_http_client
from kraken.net.server import listen_http, make_site, port_address


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def tls(data: dict[str, Any]) -> TLSConfig:
    return build(TLSConfig, from_mapping(data, "daemon.yaml"))


# --------------------------------------------------------------------------- checks at start


def test_an_empty_block_is_plain():
    config = tls({})
    assert not config.configured
    assert TLSContexts.from_config(config) is None


def test_a_missing_file_is_named_with_its_key(tmp_path):
    with pytest.raises(ConfigError, match=r"daemon.yaml: cert /nope/c.pem: file not found"):
        tls({"cert": "/nope/c.pem", "key": "/nope/k.pem"})


def test_an_expired_certificate_is_refused(tmp_path, ca):
    cert, key = write_pair(tmp_path, ca, "old", **expired())
    with pytest.raises(ConfigError, match=rf"cert {cert}: certificate expired on"):
        tls({"cert": cert, "key": key})


def test_a_key_that_does_not_match_is_refused(tmp_path, ca):
    cert, _ = write_pair(tmp_path, ca, "a")
    _, other_key = write_pair(tmp_path, ca, "b")
    with pytest.raises(ConfigError, match=rf"key {other_key}: does not match the certificate in cert {cert}"):
        tls({"cert": cert, "key": other_key})


def test_a_certificate_from_another_ca_is_refused(tmp_path, ca):
    cert, key = write_pair(tmp_path, trustme.CA(), "foreign")
    with pytest.raises(ConfigError, match=rf"cert {cert}: not signed by ca"):
        tls({"cert": cert, "key": key, "ca": write_ca(tmp_path, ca)})


def test_a_file_that_is_not_pem_is_refused(tmp_path):
    path = tmp_path / "ca.crt"
    path.write_text("hello\n")
    with pytest.raises(ConfigError, match=rf"ca {path}: no PEM certificate"):
        tls({"ca": str(path)})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cert": "x"}, "cert and key go together"),
        ({"client_ca": "x"}, "client_ca needs cert and key"),
        ({"require_client_cert": True}, "require_client_cert needs client_ca"),
    ],
)
def test_incomplete_blocks_are_refused(data, message):
    with pytest.raises(ConfigError, match=message):
        tls(data)


def test_a_daemon_config_names_the_file_and_key(tmp_path, ca):
    cert, key = write_pair(tmp_path, ca, "old", **expired())
    path = tmp_path / "agent.yaml"
    path.write_text(f"tls: {{cert: {cert}, key: {key}}}\n")
    with pytest.raises(usage.UsageError, match=rf"agent.yaml: tls: cert {cert}: certificate expired"):
        load_or_usage_error(AgentConfig, str(path))


def test_p2p_tls_needs_the_cluster_certificate(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text("p2p: {tls: true}\n")
    with pytest.raises(usage.UsageError, match=r"p2p\.tls needs tls\.cert, tls\.key and tls\.ca"):
        load_or_usage_error(AgentConfig, str(path))


# --------------------------------------------------------------------------- real listeners


class Server:
    """A TLS HTTP listener on loopback answering GET /hello, and what it logged."""

    def __init__(self, reactor: Any, contexts: TLSContexts) -> None:
        root = Resource()
        root.putChild(b"hello", Data(b"hi", "text/plain"))
        site = make_site(root, reactor=reactor, access_log=False)
        site.timeOut = None  # no idle timer left behind by a connection the test leaves open
        self.contexts = contexts
        self.service = listen_http(
            "tcp:0:interface=127.0.0.1", site, reactor=reactor, component="test", tls=contexts.http_server()
        )
        self.events: list[dict[str, Any]] = []
        self.refused: Deferred[str] = Deferred()  # the first refusal the server logs

    def _observe(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event.get("log_format", "").startswith("TLS handshake with") and not self.refused.called:
            self.refused.callback(event["error"])

    async def start(self) -> str:
        globalLogPublisher.addObserver(self._observe)
        self.service.startService()
        port = await self.service._waitingForPort
        return "https://" + port_address(port)

    async def stop(self) -> None:
        globalLogPublisher.removeObserver(self._observe)
        await self.service.stopService()

    def refusals(self) -> list[str]:
        return [e["error"] for e in self.events if e.get("log_format", "").startswith("TLS handshake with")]


def server_contexts(tmp_path, ca, *, require=True, hosts=()) -> TLSContexts:
    cert, key = write_pair(tmp_path / "server", ca, "server", *hosts)
    client_ca = write_ca(tmp_path / "server", ca)
    return TLSContexts(TLSConfig(cert=cert, key=key, client_ca=client_ca, require_client_cert=require))


def client_contexts(tmp_path, trusted, *, signer=None) -> TLSContexts:
    """Trusts ``trusted``; presents a certificate from ``signer`` (None: none)."""
    directory = tmp_path / f"client{len(os.listdir(tmp_path))}"
    ca = write_ca(directory, trusted)
    if signer is None:
        return TLSContexts(TLSConfig(ca=ca))
    cert, key = write_pair(directory, signer, "client")
    # A bundle of both CAs: the certificate must chain to ``ca`` (checked at start).
    bundle = directory / "bundle.crt"
    bundle.write_bytes(trusted.cert_pem.bytes() + signer.cert_pem.bytes())
    return TLSContexts(TLSConfig(ca=str(bundle), cert=cert, key=key))


@contextlib.asynccontextmanager
async def serving(reactor: Any, contexts: TLSContexts) -> AsyncIterator[tuple[Server, str]]:
    server = Server(reactor, contexts)
    url = await server.start()
    try:
        yield server, url
    finally:
        await server.stop()


async def get(reactor, contexts, url):
    client, pool = make_http_client(reactor, HTTPClientConfig(), tls=contexts)
    try:
        response = await client.get(url + "/hello")
        return response.code, await treq.content(response)
    finally:
        await pool.pool.closeCachedConnections()


async def refused(reactor, contexts, url) -> str:
    with pytest.raises(ResponseNeverReceived) as caught:
        await get(reactor, contexts, url)
    return str(caught.value.reasons[0].value)


@pytest_twisted.ensureDeferred
async def test_a_trusted_client_with_a_cluster_certificate_gets_through(reactor, tmp_path, ca):
    async with serving(reactor, server_contexts(tmp_path, ca)) as (server, url):
        # The client trusts only the server's CA and presents a certificate from it.
        contexts = TLSContexts(TLSConfig(ca=write_ca(tmp_path, ca), cert=server.contexts.config.cert,
                                         key=server.contexts.config.key))  # fmt: skip
        assert await get(reactor, contexts, url) == (200, b"hi")
        assert server.refusals() == []


@pytest_twisted.ensureDeferred
async def test_a_server_from_an_untrusted_ca_is_refused_by_the_client(reactor, tmp_path, ca):
    async with serving(reactor, server_contexts(tmp_path, ca, require=False)) as (_server, url):
        error = await refused(reactor, client_contexts(tmp_path, trustme.CA()), url)
        assert "certificate verify failed" in error


@pytest_twisted.ensureDeferred
async def test_a_server_certificate_for_another_host_is_refused(reactor, tmp_path, ca):
    async with serving(reactor, server_contexts(tmp_path, ca, require=False, hosts=("other.example",))) as (
        _server,
        url,
    ):
        error = await refused(reactor, client_contexts(tmp_path, ca), url)
        assert "127.0.0.1" in error


@pytest_twisted.ensureDeferred
async def test_a_client_without_a_certificate_is_refused_in_the_handshake_and_logged(reactor, tmp_path, ca):
    async with serving(reactor, server_contexts(tmp_path, ca)) as (server, url):
        error = await refused(reactor, client_contexts(tmp_path, ca), url)
        assert "certificate required" in error
        assert await server.refused == "peer did not return a certificate"
        assert len(server.refusals()) == 1
        event = next(e for e in server.events if "peer" in e and "error" in e)
        assert event["peer"].startswith("127.0.0.1:")


@pytest_twisted.ensureDeferred
async def test_a_client_certificate_from_another_ca_is_refused(reactor, tmp_path, ca):
    async with serving(reactor, server_contexts(tmp_path, ca)) as (server, url):
        await refused(reactor, client_contexts(tmp_path, ca, signer=trustme.CA()), url)
        assert await server.refused == "certificate verify failed"
        assert len(server.refusals()) == 1


@pytest_twisted.ensureDeferred
async def test_without_require_a_client_without_certificate_gets_through(reactor, tmp_path, ca):
    async with serving(reactor, server_contexts(tmp_path, ca, require=False)) as (_server, url):
        assert await get(reactor, client_contexts(tmp_path, ca), url) == (200, b"hi")


@implementer(IHandshakeListener)
class Raw(Protocol):
    """A TLS connection that records the server's certificate once the handshake is done."""

    def __init__(self) -> None:
        self.shook: Deferred[None] = Deferred()
        self.answer: Deferred[bytes] = Deferred()
        self.data = b""

    def connectionMade(self) -> None:
        self.transport.write(b"")  # the handshake starts with the first write

    def handshakeCompleted(self) -> None:
        self.shook.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.data.endswith(b"hi"):
            self.answer.callback(self.data)

    def serial(self) -> int:
        return ssl.Certificate.peerFromTransport(self.transport).serialNumber()


async def dial(reactor, contexts: TLSContexts, port: int) -> Raw:
    protocol = Raw()
    endpoint = wrapClientTLS(contexts.client_creator("127.0.0.1"), TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    await endpoint.connect(Factory.forProtocol(lambda: protocol))
    await protocol.shook
    return protocol


@pytest_twisted.ensureDeferred
async def test_sighup_serves_the_new_certificate_to_new_connections_and_keeps_old_ones(reactor, tmp_path, ca):
    contexts = server_contexts(tmp_path, ca)
    server = Server(reactor, contexts)
    url = await server.start()
    port = int(url.rsplit(":", 1)[1])
    reloaded: Deferred[bool] = Deferred()
    reloader = ReloadOnSIGHUP(contexts, reactor, after=reloaded.callback)
    reloader.startService()
    client = TLSContexts(TLSConfig(ca=write_ca(tmp_path, ca), cert=contexts.config.cert, key=contexts.config.key))
    old = new = None
    try:
        old = await dial(reactor, client, port)
        write_pair(tmp_path / "server", ca, "server")  # the rotated pair, in place
        os.kill(os.getpid(), signal.SIGHUP)
        assert await reloaded is True
        new = await dial(reactor, client, port)
        assert new.serial() != old.serial()
        # The old connection is still open, and still served.
        old.transport.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await old.answer).startswith(b"HTTP/1.1 200")
    finally:
        reloader.stopService()
        for protocol in (old, new):
            if protocol is not None:
                protocol.transport.abortConnection()
        await server.stop()


def test_a_broken_reload_keeps_the_previous_pair(tmp_path, ca):
    contexts = server_contexts(tmp_path, ca)
    before = contexts.http_server()
    _, other_key = write_pair(tmp_path / "other", ca, "other")
    os.replace(other_key, contexts.config.key)
    assert contexts.reload() is False
    assert contexts.serves and before is not None


@pytest_twisted.ensureDeferred
async def test_sighup_without_a_tls_block_is_logged_and_stops_nothing(reactor):
    # The units' ExecReload sends SIGHUP to every daemon, with TLS or without: it must never stop one.
    reloaded: Deferred[bool] = Deferred()
    reloader = ReloadOnSIGHUP(None, reactor, after=reloaded.callback)
    reloader.startService()
    try:
        with capturedLogs() as events:
            os.kill(os.getpid(), signal.SIGHUP)
            assert await reloaded is True
        assert any(e.get("log_format") == "SIGHUP: nothing to reload (no tls block)" for e in events)
    finally:
        reloader.stopService()
