"""The HTTP server side shared by every daemon: one way to build a ``Site``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, cast

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IPushProducer,
    IStreamServerEndpoint,
    ITCPTransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException
from zope.interface import implementer

from kraken.core.address import join_host_port
from kraken.net.tls import TLSServerFactory

log = Logger()
READ_SIZE = 1 << 20
# A TLS record carrying a handshake starts 0x16 0x03 (TLS 1.0-1.3 ClientHello).
_TLS_HANDSHAKE = b"\x16\x03"
_NOT_TLS_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
    b"This port speaks plain HTTP, not TLS.\n"
)
# How long a connection answered before its request body ended goes on
# reading (and dropping) what the client still sends, so the client reads the
# answer before the connection is cut (see ``PlainHTTPChannel.answer_and_close``).
LINGER = 2.0


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
    _draining = False
    _linger: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]  # twisted.web.http is unannotated
        # Read up to 1 MiB per call instead of 64 KiB: blob uploads arrive in
        # far fewer, larger chunks, which is most of the per-byte cost here.
        transport = self.transport
        if transport is not None and hasattr(transport, "bufferSize"):
            transport.bufferSize = READ_SIZE

    def dataReceived(self, data: bytes) -> None:
        if self._draining:
            return  # answered already: the rest of the request is dropped
        if self._first and data:
            self._first = False
            if data.startswith(_TLS_HANDSHAKE):
                self.transport.write(_NOT_TLS_ANSWER)  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
        super().dataReceived(data)  # type: ignore[no-untyped-call]  # twisted.web.http is unannotated

    def answer_and_close(self, response: bytes, linger: float = LINGER) -> None:
        """Send ``response`` (a whole HTTP response) now, whatever the request
        is doing, and close the connection.

        The client may still be sending its body, and closing a socket with
        unread data in it makes the kernel send a reset, which can destroy
        the answer before the client reads it. So this sends the answer,
        shuts down the sending side (the client reads the answer and then
        the end of the stream), reads on and drops what still arrives (the
        transport may be paused: it is resumed), and aborts the connection
        if the client has not closed it ``linger`` seconds later."""
        transport = self.transport
        if transport is None or self._draining:
            return
        self._draining = True
        self.setTimeout(None)  # type: ignore[no-untyped-call]  # twisted.protocols.policies is unannotated
        transport.write(response)
        if ITCPTransport.providedBy(transport):
            transport.loseWriteConnection()
            cast(IPushProducer, transport).resumeProducing()
            self._linger = self.callLater(linger, self._linger_over)  # type: ignore[no-untyped-call]  # as above
        else:
            transport.loseConnection()

    def _linger_over(self) -> None:
        self._linger = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]  # ITCPTransport has it

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]  # twisted.web is unannotated
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        super().connectionLost(reason)  # type: ignore[no-untyped-call]  # twisted.web.http is unannotated


class Spool(Protocol):
    """What a ``SpoolFactory`` makes: a file-like body sink with a way to
    wait until everything written has reached the disk."""

    def write(self, data: bytes) -> object: ...
    def tell(self) -> int: ...
    def seek(self, offset: int, whence: int = 0) -> int: ...
    def read(self, n: int = -1) -> bytes: ...
    def close(self) -> None: ...
    def done_receiving(self) -> Deferred[None]: ...


SpoolFactory = Callable[..., Spool]  # (pause=, resume=, error=, line=(method, path)) -> Spool


class Refusal(NamedTuple):
    """The answer to a request whose body could not be stored."""

    status: int
    headers: Sequence[tuple[bytes, bytes]]
    body: bytes


BodyRefused = Callable[[bytes, bytes, Failure], "Refusal | Deferred[Refusal]"]
"""``(method, path, failure) -> Refusal``: how a site answers a request whose
spooled body could not be written (its format: plain text, OCI JSON...). It
may also clean up what the request belonged to (an upload), since the handler
never runs: it then returns a Deferred that fires with the answer once nothing
of that upload is left, so a client never sees its error before that."""


def plain_refusal(method: bytes, path: bytes, failure: Failure) -> Refusal:
    """The default ``BodyRefused``: 500 and a line of text."""
    return Refusal(500, [(b"Content-Type", b"text/plain; charset=utf-8")], b"could not store the request body\n")


def refusal_bytes(refusal: Refusal) -> bytes:
    """The whole HTTP/1.1 response for ``refusal``, which closes the connection."""
    reason = RESPONSES.get(refusal.status, b"Error")
    lines = [b"HTTP/1.1 %d %s" % (refusal.status, reason)]
    lines += [name + b": " + value for name, value in refusal.headers]
    lines += [b"Content-Length: %d" % len(refusal.body), b"Connection: close", b"", b""]
    return b"\r\n".join(lines) + refusal.body


# Bodies smaller than this stay where twisted.web puts them (memory or a
# temporary file); larger ones, and those of unknown length, are spooled.
SPOOL_MIN = 1 << 20


class SpoolingRequest(Request):
    """A ``Request`` whose large bodies go to the site's spool factory.

    The request is processed only once the spool has every byte on disk, so
    handlers see an ordinary, complete ``request.content``.

    If the spool cannot write (the disk is full), the request is answered at
    once with the site's ``BodyRefused`` answer, even while the body is still
    arriving and the connection paused, and the connection is closed
    (``PlainHTTPChannel.answer_and_close``): the handler never runs.
    """

    log = Logger()
    _refused = False
    _line: tuple[bytes, bytes] | None = None

    def gotLength(self, length: int | None) -> None:
        # Site.buildProtocol sets channel.site; HTTPChannel does not declare it.
        factory: SpoolFactory | None = getattr(getattr(self.channel, "site", None), "spool_factory", None)
        if factory is None or (length is not None and length < SPOOL_MIN):
            super().gotLength(length)  # type: ignore[no-untyped-call]  # twisted.web is unannotated
            return
        # ITransport does not declare IPushProducer, but the stream transports twisted.web runs on provide it.
        transport = cast(IPushProducer, self.channel.transport)
        # The request line is the channel's (private) business until the whole body is in.
        line = (getattr(self.channel, "_command", b""), getattr(self.channel, "_path", b""))
        spool = factory(
            pause=transport.pauseProducing, resume=transport.resumeProducing, error=self._spool_failed, line=line
        )
        self.content = spool
        self.notifyFinish().addBoth(lambda _: spool.close())

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        done = getattr(self.content, "done_receiving", None)
        if done is None:
            super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]  # twisted.web
            return
        self._line = (command, path)
        done().addCallbacks(lambda _: Request.requestReceived(self, command, path, version), self._spool_failed)

    def _spool_failed(self, failure: Failure) -> None:
        if self._refused:
            return
        self._refused = True
        channel = self.channel
        if channel is None or channel.transport is None:
            return  # the client is gone already
        # The request line stays the channel's (private) business until the whole body is in.
        method, path = self._line or (getattr(channel, "_command", b""), getattr(channel, "_path", b""))
        refuse: BodyRefused = getattr(getattr(channel, "site", None), "body_refused", None) or plain_refusal
        try:
            answer = refuse(method, path, failure)
        except Exception:
            self.log.failure("answering a refused request body failed")
            answer = plain_refusal(method, path, failure)
        if isinstance(answer, Deferred):

            def broken(f: Failure) -> Refusal:
                self.log.failure("answering a refused request body failed", f)
                return plain_refusal(method, path, failure)

            answer.addErrback(broken).addCallback(self._refuse, method, path, failure)
        else:
            self._refuse(answer, method, path, failure)

    def _refuse(self, refusal: Refusal, method: bytes, path: bytes, failure: Failure) -> None:
        channel = self.channel
        if channel is None or channel.transport is None:
            return  # the client is gone meanwhile
        self.log.warn(
            "request body of {method} {path} not stored ({error}): answered {status} and closing the connection",
            method=_text(method),
            path=_text(path),
            error=str(failure.value),
            status=refusal.status,
        )
        answer = refusal_bytes(refusal)
        if isinstance(channel, PlainHTTPChannel):
            channel.answer_and_close(answer)
        else:
            channel.transport.write(answer)
            channel.transport.loseConnection()


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("latin-1") if isinstance(value, bytes) else value


#: The answer to a request whose path or Host is not UTF-8 once percent-decoded (Klein would log a
#: traceback for each and answer a page of its own).
NOT_UTF8 = Refusal(400, [(b"Content-Type", b"text/plain; charset=utf-8")], b"the request path is not UTF-8\n")


class _RefusedRequest(Resource):
    isLeaf = True

    def __init__(self, refusal: Refusal) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.web is unannotated
        self._refusal = refusal

    def render(self, request: IRequest) -> bytes:
        request.setResponseCode(self._refusal.status)
        for name, value in self._refusal.headers:
            request.setHeader(name, value)
        return self._refusal.body


class _Site(Site):
    """A ``Site`` that answers requests Klein cannot route (a path or Host that is not UTF-8) itself."""

    not_utf8 = NOT_UTF8

    def getResourceFor(self, request: IRequest) -> IResource:
        try:
            b"/".join(getattr(request, "postpath", [])).decode("utf-8")  # set by Request.process
            (request.getHeader(b"host") or b"").decode("utf-8")
        except UnicodeDecodeError:
            return _RefusedRequest(self.not_utf8)
        return cast(IResource, super().getResourceFor(request))  # type: ignore[no-untyped-call]


def make_site(
    resource: IResource,
    *,
    reactor: Any,
    access_log: bool = True,
    spool: SpoolFactory | None = None,
    body_refused: BodyRefused | None = None,
    not_utf8: Refusal = NOT_UTF8,
) -> Site:
    """A ``Site`` for a daemon's HTTP API: no tracebacks to clients, TLS
    handshakes on plain ports refused at once, a request whose path is not
    UTF-8 answered with ``not_utf8``, and, given a ``spool`` factory, large
    request bodies written and hashed as they arrive; a body the spool cannot
    write is answered at once with ``body_refused``."""
    # None of our APIs takes form submissions: skip Twisted's parsing of form bodies (it parses the
    # Content-Type of every POST with the email package: about a tenth of a tracker announce's CPU).
    site = _Site(resource, reactor=reactor, parsePOSTFormSubmission=False)  # type: ignore[no-untyped-call]
    site.not_utf8 = not_utf8
    # HTTPFactory annotates protocol as a method; it is the channel class attribute Site.buildProtocol calls.
    site.protocol = PlainHTTPChannel  # type: ignore[method-assign,assignment]
    if spool is not None:
        site.requestFactory = SpoolingRequest
        site.spool_factory = spool  # type: ignore[attr-defined]
        site.body_refused = body_refused or plain_refusal  # type: ignore[attr-defined]
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
    description: str,
    site: Site,
    *,
    reactor: Any,
    component: str,
    tls: IOpenSSLServerConnectionCreator | None = None,
    **fields: object,
) -> StreamServerEndpointService:
    """The daemon's HTTP listener, named ``http`` (see ``listen``)."""
    return listen(description, site, reactor=reactor, component=component, name="http", tls=tls, **fields)


def listen(
    description: str,
    factory: IProtocolFactory,
    *,
    reactor: Any,
    component: str,
    name: str,
    tls: IOpenSSLServerConnectionCreator | None = None,
    **fields: object,
) -> StreamServerEndpointService:
    """A listener, as ``strports.service`` builds it (a bind failure aborts
    startup), named ``name``. Once the port is bound it logs "<component>
    listening on <address> (<endpoint>)", with ``fields`` as extra event keys.
    With ``tls`` (``kraken.net.tls.TLSContexts``), every connection speaks
    TLS over the endpoint; a refused handshake is logged with the peer."""

    def announce(port: IListeningPort) -> None:
        log.info(
            "{component} listening on {address} ({endpoint}{tls})",
            component=component,
            address=port_address(port),
            endpoint=description,
            tls=", TLS" if tls is not None else "",
            **fields,
        )

    if tls is not None:
        factory = TLSServerFactory(tls, factory, component)

    endpoint = _Announcing(serverFromString(reactor, description), announce)
    service = StreamServerEndpointService(endpoint, factory)
    # What strports.service does: raise a bind failure out of startService,
    # so twistd exits instead of running on without its port.
    service._raiseSynchronously = True
    service.setName(name)
    return service


def port_address(port: IListeningPort) -> str:
    """``host:port`` of a TCP port (``[::1]:15002`` on IPv6), or the address's text for other kinds."""
    host = port.getHost()
    if hasattr(host, "port"):
        return join_host_port(getattr(host, "host", ""), host.port)
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
