"""The proxy's per-client request rate: a token bucket per client address in front of the registry API.

Each request takes one token from its client's bucket (``kraken.throttle.TokenBucket``: ``requests_per_second``,
bursts of ``request_burst``); a client with none left is answered 429 TOOMANYREQUESTS (OCI error JSON) with
``Retry-After`` before any handler runs. The table of buckets keeps at most ``max_clients`` addresses, forgetting
the least recently seen first: an address idle long enough has a full bucket anyway, so forgetting it costs it
nothing, and a flood of addresses costs bounded memory. ``/health`` is never limited (load balancers poll it).

The client is the peer address of the connection; behind a load balancer every client is the balancer (no header
such as ``X-Forwarded-For`` is trusted here).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from kraken.proxy.config import LimitsConfig
from kraken.registry.errors import JSON_CONTENT_TYPE, TooManyRequests
from kraken.throttle import TokenBucket

log = Logger()


class ClientRates:
    """Token buckets by client address, at most ``max_clients`` of them."""

    def __init__(self, rate: float, burst: int, max_clients: int, *, clock: IReactorTime) -> None:
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> float | None:
        """Take one request's token for ``client``: None if it may go on, else the seconds to wait."""
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = TokenBucket(self.rate, self.burst, clock=self._clock)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)[1].close()
        else:
            self._buckets.move_to_end(client)
        reservation = bucket.reserve(1)
        if reservation.called:
            return None
        reservation.cancel()  # never wait: refuse now
        reservation.addErrback(lambda f: f.trap(CancelledError))
        return 1.0 / self.rate


class RateLimited(Resource):
    """``inner`` (the registry API's resource) behind ``ClientRates``."""

    isLeaf = True

    def __init__(self, inner: IResource, rates: ClientRates) -> None:
        super().__init__()
        self._inner = inner
        self.rates = rates

    def render(self, request: IRequest) -> Any:
        if request.path != b"/health":
            client = str(getattr(request.getClientAddress(), "host", "") or "")
            wait = self.rates.take(client)
            if wait is not None:
                return _too_many(request, client, wait, self.rates.rate)
        return self._inner.render(request)


def _too_many(request: IRequest, client: str, wait: float, rate: float) -> bytes:
    retry_after = max(1, math.ceil(wait))
    log.debug("{client}: over {rate} requests/s, answered 429", client=client, rate=rate)
    error = TooManyRequests(
        f"too many requests from {client}: at most {rate:g} a second; retry after {retry_after} s",
        detail={"requests_per_second": rate},
    )
    body = error.body()
    request.setResponseCode(error.status)
    request.setHeader(b"content-type", JSON_CONTENT_TYPE)
    request.setHeader(b"retry-after", str(retry_after).encode("ascii"))
    request.setHeader(b"docker-distribution-api-version", b"registry/2.0")
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def rate_limited(inner: IResource, limits: LimitsConfig, *, clock: IReactorTime) -> IResource:
    """``inner`` behind the per-client request rate of ``limits``; ``inner`` itself when there is none."""
    if not limits.requests_per_second:
        return inner
    return RateLimited(
        inner, ClientRates(limits.requests_per_second, limits.request_burst, limits.max_clients, clock=clock)
    )
