"""The HTTP server side shared by every daemon: one way to build a ``Site``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Site
from zope.interface import implementer

# A TLS record carrying a handshake starts 0x16 0x03 (TLS 1.0-1.3 ClientHello).
_TLS_HANDSHAKE = b"\x16\x03"
_NOT_TLS_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
    b"This port speaks plain HTTP, not TLS.\n"
)


class PlainHTTPChannel(HTTPChannel):
    """An ``HTTPChannel`` that answers a TLS handshake at once.

    Registry clients told a registry is "insecure" (skopeo, containerd,
    podman) try TLS first and fall back to plain HTTP when the handshake
    fails. Plain twisted.web waits for a request line that never comes, so
    each client command would stall until its TLS timeout (10 s for skopeo).
    Seeing a handshake record as the first bytes, this answers 400 and
    closes, as Go's net/http does, and the client falls back immediately.
    """

    log = Logger()
    _first = True

    def dataReceived(self, data: bytes) -> None:
        if self._first and data:
            self._first = False
            if data.startswith(_TLS_HANDSHAKE):
                self.transport.write(_NOT_TLS_ANSWER)  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
        super().dataReceived(data)


def make_site(resource: IResource, *, reactor: Any, access_log: bool = True) -> Site:
    """A ``Site`` for a daemon's HTTP API: no tracebacks to clients, TLS
    handshakes on plain ports refused at once."""
    site = Site(resource, reactor=reactor)
    site.protocol = PlainHTTPChannel
    site.displayTracebacks = False
    if not access_log:
        site.log = lambda request: None  # type: ignore[method-assign]
    return site


@implementer(IStreamServerEndpoint)
class _Announcing:
    """Wraps an endpoint so a callback sees the port once it is bound."""

    def __init__(self, inner: IStreamServerEndpoint, announce: Callable[[IListeningPort], None]) -> None:
        self._inner = inner
        self._announce = announce

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        def bound(port: IListeningPort) -> IListeningPort:
            self._announce(port)
            return port

        return self._inner.listen(factory).addCallback(bound)


def listen_http(
    description: str, site: Site, *, reactor: Any, announce: Callable[[IListeningPort], None]
) -> StreamServerEndpointService:
    """The daemon's HTTP listener, as ``strports.service`` builds it (a bind
    failure aborts startup), named ``http``; ``announce`` is called with the
    bound port so the daemon can log where it listens."""
    endpoint = _Announcing(serverFromString(reactor, description), announce)
    service = StreamServerEndpointService(endpoint, site)
    # What strports.service does: raise a bind failure out of startService,
    # so twistd exits instead of running on without its port.
    service._raiseSynchronously = True
    service.setName("http")
    return service


def port_address(port: IListeningPort) -> str:
    """``host:port`` of a TCP port, or the address's text for other kinds."""
    host = port.getHost()
    if hasattr(host, "port"):
        return f"{getattr(host, 'host', '')}:{host.port}"
    return str(host)
