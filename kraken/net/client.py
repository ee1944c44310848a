"""One treq ``HTTPClient`` per service, with a pool the service closes on stop; bounded bodies.

``make_http_client`` is the one place where every outgoing connection is made: TLS client options (a
``IPolicyForHTTPS``) are given there, and nowhere else.
"""

from __future__ import annotations

from typing import Any

import attrs
import treq
from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS

from kraken.config import Duration, Size
from kraken.net.tls import TLSContexts


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
    extra: dict[str, Any] = {} if policy is None else {"contextFactory": policy}
    agent = Agent(reactor, connectTimeout=config.connect_timeout, pool=pool, **extra)
    return HTTPClient(agent), HTTPClientService(pool)


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
