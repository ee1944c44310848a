"""The HTTP server side shared by every daemon: one way to build a ``Site``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IPushProducer, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException
from zope.interface import implementer

log = Logger()
READ_SIZE = 1 << 20
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

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]  # twisted.web.http is unannotated
        # Read up to 1 MiB per call instead of 64 KiB: blob uploads arrive in
        # far fewer, larger chunks, which is most of the per-byte cost here.
        transport = self.transport
        if transport is not None and hasattr(transport, "bufferSize"):
            transport.bufferSize = READ_SIZE

    def dataReceived(self, data: bytes) -> None:
        if self._first and data:
            self._first = False
            if data.startswith(_TLS_HANDSHAKE):
                self.transport.write(_NOT_TLS_ANSWER)  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
        super().dataReceived(data)  # type: ignore[no-untyped-call]  # twisted.web.http is unannotated


class Spool(Protocol):
    """What a ``SpoolFactory`` makes: a file-like body sink with a way to
    wait until everything written has reached the disk."""

    def write(self, data: bytes) -> object: ...
    def tell(self) -> int: ...
    def seek(self, offset: int, whence: int = 0) -> int: ...
    def read(self, n: int = -1) -> bytes: ...
    def close(self) -> None: ...
    def done_receiving(self) -> Deferred[None]: ...


SpoolFactory = Callable[..., Spool]  # (pause=, resume=) -> Spool

# Bodies smaller than this stay where twisted.web puts them (memory or a
# temporary file); larger ones, and those of unknown length, are spooled.
SPOOL_MIN = 1 << 20


class SpoolingRequest(Request):
    """A ``Request`` whose large bodies go to the site's spool factory.

    The request is processed only once the spool has every byte on disk, so
    handlers see an ordinary, complete ``request.content``.
    """

    log = Logger()

    def gotLength(self, length: int | None) -> None:
        # Site.buildProtocol sets channel.site; HTTPChannel does not declare it.
        factory: SpoolFactory | None = getattr(getattr(self.channel, "site", None), "spool_factory", None)
        if factory is None or (length is not None and length < SPOOL_MIN):
            super().gotLength(length)  # type: ignore[no-untyped-call]  # twisted.web is unannotated
            return
        # ITransport does not declare IPushProducer, but the stream transports twisted.web runs on provide it.
        transport = cast(IPushProducer, self.channel.transport)
        spool = factory(pause=transport.pauseProducing, resume=transport.resumeProducing)
        self.content = spool
        self.notifyFinish().addBoth(lambda _: spool.close())

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        done = getattr(self.content, "done_receiving", None)
        if done is None:
            super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]  # twisted.web
            return
        done().addCallbacks(lambda _: Request.requestReceived(self, command, path, version), self._spool_failed)

    def _spool_failed(self, failure: Failure) -> None:
        self.log.failure("could not store a request body; closing the connection", failure)
        if self.channel.transport is not None:
            self.channel.transport.loseConnection()


def make_site(resource: IResource, *, reactor: Any, access_log: bool = True, spool: SpoolFactory | None = None) -> Site:
    """A ``Site`` for a daemon's HTTP API: no tracebacks to clients, TLS
    handshakes on plain ports refused at once, and, given a ``spool``
    factory, large request bodies written and hashed as they arrive."""
    # None of our APIs takes form submissions: skip Twisted's parsing of form bodies (it parses the
    # Content-Type of every POST with the email package: about a tenth of a tracker announce's CPU).
    site = Site(resource, reactor=reactor, parsePOSTFormSubmission=False)
    # HTTPFactory annotates protocol as a method; it is the channel class attribute Site.buildProtocol calls.
    site.protocol = PlainHTTPChannel  # type: ignore[method-assign,assignment]
    if spool is not None:
        site.requestFactory = SpoolingRequest
        site.spool_factory = spool  # type: ignore[attr-defined]
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
    description: str, site: Site, *, reactor: Any, component: str, **fields: object
) -> StreamServerEndpointService:
    """The daemon's HTTP listener, named ``http`` (see ``listen``)."""
    return listen(description, site, reactor=reactor, component=component, name="http", **fields)


def listen(
    description: str, factory: IProtocolFactory, *, reactor: Any, component: str, name: str, **fields: object
) -> StreamServerEndpointService:
    """A listener, as ``strports.service`` builds it (a bind failure aborts
    startup), named ``name``. Once the port is bound it logs "<component>
    listening on <address> (<endpoint>)", with ``fields`` as extra event keys."""

    def announce(port: IListeningPort) -> None:
        log.info(
            "{component} listening on {address} ({endpoint})",
            component=component,
            address=port_address(port),
            endpoint=description,
            **fields,
        )

    endpoint = _Announcing(serverFromString(reactor, description), announce)
    service = StreamServerEndpointService(endpoint, factory)
    # What strports.service does: raise a bind failure out of startService,
    # so twistd exits instead of running on without its port.
    service._raiseSynchronously = True
    service.setName(name)
    return service


def port_address(port: IListeningPort) -> str:
    """``host:port`` of a TCP port, or the address's text for other kinds."""
    host = port.getHost()
    if hasattr(host, "port"):
        return f"{getattr(host, 'host', '')}:{host.port}"
    return str(host)


class HTTPError(Exception):
    """An error a JSON API answers with ``status`` and ``{"error": message, **extra}``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.extra = extra


def json_response(request: IRequest, status: int, doc: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(doc, separators=(",", ":")).encode("utf-8") + b"\n"


def read_body(request: IRequest, limit: int) -> bytes:
    """A small request body (JSON, a digest), refused with 413 above ``limit``."""
    length = request.getHeader(b"Content-Length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPError(413, f"body larger than {limit} bytes")
    content = request.content
    body = b"" if content is None else content.read(limit + 1)
    if len(body) > limit:
        raise HTTPError(413, f"body larger than {limit} bytes")
    return body


def json_error(request: IRequest, failure: Failure, log: Logger) -> bytes:
    """The one ``handle_errors`` body of a JSON API: ``HTTPError`` as given,
    routing errors (404, 405) as such, our own timeouts as 504, anything
    else logged and answered 500 without a traceback."""
    e = failure.value
    if isinstance(e, HTTPError):
        return json_response(request, e.status, {"error": e.message, **e.extra})
    if isinstance(e, HTTPException):
        return json_response(request, e.code or 500, {"error": e.description or e.name})
    if isinstance(e, CancelledError):
        # The client is still here, so this was our own timeout.
        return json_response(request, 504, {"error": "timed out"})
    log.failure(
        "{method} {path} failed",
        failure,
        method=request.method.decode("ascii", "replace"),
        path=request.path.decode("utf-8", "replace"),
    )
    return json_response(request, 500, {"error": "internal error"})
