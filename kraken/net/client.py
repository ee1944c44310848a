"""One treq ``HTTPClient`` per service, with a pool the service closes on stop; bounded bodies.

``make_http_client`` is the one place where every outgoing connection is made: TLS client options (a
``IPolicyForHTTPS``) are given there, and nowhere else.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs
import treq
from hyperlink import DecodedURL, EncodedURL
from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from kraken.config import Duration, Size
from kraken.core.address import is_ipv6
from kraken.net.tls import AgentEndpoints, TLSContexts


@attrs.frozen
class HTTPClientConfig:
    """How a daemon talks HTTP to the others (YAML key ``http_client``)."""

    connect_timeout: Duration = Duration(5.0)
    # A request whose response headers take longer than this is abandoned, and
    # so is a response body that then sends nothing for this long.
    timeout: Duration = Duration(60.0)
    # Uploads of big blobs get ``timeout`` plus their size at this rate.
    min_transfer_rate: Size = Size(10 << 20)
    max_body: Size = Size(16 << 20)
    retries: int = 3
    backoff: Duration = Duration(0.25)
    max_backoff: Duration = Duration(5.0)
    # Idle keep-alive connections kept per host (not a cap on concurrency).
    max_connections_per_host: int = 16


class ResponseTooLarge(Exception):
    pass


class HTTPStatusError(Exception):
    """An unexpected status from another component."""

    def __init__(self, method: str, url: str, code: int, body: bytes = b"") -> None:
        super().__init__(f"{method} {url} -> {code}: {body[:200]!r}")
        self.code = code
        self.body = body


class HTTPClientService(Service):
    """Owns the connection pool: stopping the service closes cached connections."""

    def __init__(self, pool: HTTPConnectionPool) -> None:
        self.setName("http-client")  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        self.pool = pool

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed


def make_http_client(
    reactor: Any, config: HTTPClientConfig, *, tls: TLSContexts | IPolicyForHTTPS | None = None
) -> tuple[HTTPClient, HTTPClientService]:
    """The client every component's ``client.py`` takes, and the Service that
    must be added to the daemon so the pool is closed on shutdown.

    ``tls`` decides how ``https://`` connections are verified: the daemon's
    ``TLSContexts`` (trusts ``tls.ca``, presents ``tls.cert``; host names
    always checked), or None: Twisted's default, the system's trust roots
    and the host name."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = config.max_connections_per_host
    pool.retryAutomatically = False
    policy = tls.policy() if isinstance(tls, TLSContexts) else tls
    if policy is None:
        agent = Agent(reactor, connectTimeout=config.connect_timeout, pool=pool)
    else:  # the same endpoints as Agent's, with our TLS layer (kraken.net.tlsfast) for https://
        agent = Agent.usingEndpointFactory(reactor, AgentEndpoints(reactor, policy, config.connect_timeout), pool=pool)
    return IPv6LiteralClient(_IPv6LiteralAgent(agent)), HTTPClientService(pool)


# treq cannot request a URL whose host is an IPv6 literal (``http://[::1]:15002/``): it passes every URL
# through hyperlink's ``to_uri``, which IDNA-encodes the host and fails on its colons (python-hyper/hyperlink
# issues 68 and 188). So an IPv6 host crosses treq under a stand-in name, and the agent below treq puts the
# address back before Twisted's ``Agent``, which handles IPv6 literals (the Host header in brackets, an IPv6
# connection), sees the URL.
_STAND_IN = ".ipv6-literal.invalid"


class IPv6LiteralClient(HTTPClient):
    """A treq ``HTTPClient`` that also reaches ``http://[v6addr]:port/`` URLs (with ``_IPv6LiteralAgent``)."""

    def request(self, method: str, url: Any, **kwargs: Any) -> Any:
        return super().request(method, _stand_in(url), **kwargs)


def _stand_in(url: Any) -> Any:
    """``http://[::1]:15002/x`` -> ``http://ipv6-0000-...-0001.ipv6-literal.invalid:15002/x``; other URLs as given.
    (hyperlink refuses a zone id, ``[fe80::1%25eth0]``, as an invalid IPv6 host.)"""
    if isinstance(url, bytes):
        url = url.decode("ascii")
    parsed = url.encoded_url if isinstance(url, DecodedURL) else url
    if isinstance(parsed, str):
        if "[" not in parsed:
            return url  # no IPv6 literal: the usual case, untouched
        parsed = EncodedURL.from_text(parsed)
    if not isinstance(parsed, EncodedURL) or not is_ipv6(parsed.host):
        return url
    name = "ipv6-" + ipaddress.IPv6Address(parsed.host).exploded.replace(":", "-") + _STAND_IN
    return parsed.replace(host=name)


@implementer(IAgent)
class _IPv6LiteralAgent:
    """Puts the IPv6 address of a stand-in name (``_stand_in``) back in the URL, then asks ``agent``."""

    def __init__(self, agent: IAgent) -> None:
        self._agent = agent

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: IBodyProducer | None = None
    ) -> Deferred[IResponse]:
        if _STAND_IN.encode() in uri:
            parsed = URI.fromBytes(uri)
            if parsed.host.endswith(_STAND_IN.encode()):
                groups = parsed.host[len(b"ipv6-") : -len(_STAND_IN)].replace(b"-", b":")
                host = str(ipaddress.IPv6Address(groups.decode("ascii"))).encode("ascii")
                parsed.host, parsed.netloc = host, b"[%b]:%d" % (host, parsed.port)
                uri = parsed.toBytes()
        return self._agent.request(method, uri, headers, bodyProducer)


async def limited_content(response: Any, clock: IReactorTime, max_bytes: int, timeout: float) -> bytes:
    """The whole body, refusing more than ``max_bytes``; gives up after
    ``timeout`` seconds in which no data arrived."""
    chunks: list[bytes] = []
    received = 0
    timer: Any = None

    def _take(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)
        if received > max_bytes:
            raise ResponseTooLarge(f"response body exceeds {max_bytes} bytes")
        chunks.append(chunk)
        if timer is not None:
            timer.reset(timeout)

    # collect() may deliver an already-received body synchronously, before the timer exists.
    done: Deferred[None] = treq.collect(response, _take)
    timer = clock.callLater(timeout, done.cancel)
    try:
        await done
    finally:
        if timer.active():
            timer.cancel()
    return b"".join(chunks)
