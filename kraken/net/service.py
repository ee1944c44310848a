"""The one base of every treq client: the components' ``client.py`` and the storage backends that talk HTTP.

``ServiceClient`` owns what each of them would otherwise write again: one request with its timeout on the
injected clock (``_request``), bounded bodies (``_read``), draining a body nobody wants so the connection goes
back to the pool (``_drain``), an unexpected status as ``HTTPStatusError`` with the start of its body
(``_unexpected``, ``_call``) and the retry policy of the ``http_client`` block (``_retrying``). The
``HTTPClient`` it is given comes from ``kraken.net.client.make_http_client``, where TLS options go.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast
from urllib.parse import quote

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from kraken.net.client import HTTPClientConfig, HTTPStatusError, limited_content
from kraken.net.retry import RetryPolicy, with_retries

T = TypeVar("T")
#: How much of an unexpected answer's body is read (for the error) or drained (to free the connection).
ERROR_BODY = 64 << 10


def name_path(name: str) -> str:
    """A repository name for a URL path: each segment quoted, ``/`` kept."""
    if not name or any(not seg for seg in name.split("/")):
        raise ValueError(f"invalid repository name {name!r}")
    return "/".join(quote(seg, safe="") for seg in name.split("/"))


def cancellable(request: Deferred[T]) -> Deferred[T]:
    """``request`` (a treq request), except that cancelling the result
    always fails it with ``CancelledError``.

    Cancelling a treq request whose connection is open fails it with
    ``ResponseNeverReceived``, which the retry and failover loops take for a
    network error and try again: work the caller abandoned (a client gone
    away) would go on. treq's own timeout cancels ``request`` itself, not
    the result, so a timeout still fails as a network error."""
    cancelled = False

    def cancel(_: Deferred[T]) -> None:
        nonlocal cancelled
        cancelled = True
        request.cancel()

    result: Deferred[T] = Deferred(cancel)

    def done(outcome: T | Failure) -> None:
        if cancelled:
            return  # the outcome of our own cancel: dropped
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    request.addBoth(done)
    return result


def _strip_slash(url: str) -> str:
    return url.rstrip("/")


@attrs.frozen
class ServiceClient:
    """Talks to one daemon at ``base`` (like ``http://127.0.0.1:15002``)
    through the service's injected ``HTTPClient``: timeouts on the injected
    clock, bounded bodies, retries with backoff (``with_retries``)."""

    _http: HTTPClient
    _base: str = attrs.field(converter=_strip_slash)
    _clock: IReactorTime
    _config: HTTPClientConfig

    def _policy(self) -> RetryPolicy:
        return RetryPolicy.from_config(self._config)

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        return await with_retries(self._clock, self._policy(), what, attempt)

    async def _request(self, method: str, url: str, **kwargs: Any) -> IResponse:
        """One request; the timeout (default ``config.timeout``) runs until the
        response headers arrive."""
        kwargs.setdefault("timeout", self._config.timeout)
        response: IResponse = await cancellable(
            self._http.request(  # type: ignore[arg-type]  # treq's _Response provides IResponse
                method,
                url,
                allow_redirects=False,
                unbuffered=True,
                reactor=cast(Any, self._clock),  # treq only schedules the timeout on it
                **kwargs,
            )
        )
        return response

    def _slow_timeout(self, size: int) -> float:
        """The timeout of a request that sends (or makes the server process) ``size`` bytes:
        ``config.timeout`` plus the time they take at ``config.min_transfer_rate``."""
        return self._config.timeout + size / self._config.min_transfer_rate

    async def _read(self, response: IResponse, limit: int | None = None) -> bytes:
        """The body, at most ``limit`` bytes (default ``config.max_body``)."""
        limit = self._config.max_body if limit is None else limit
        return await limited_content(response, self._clock, limit, self._config.timeout)

    async def _drain(self, response: IResponse) -> None:
        """Consume a small body so the connection can go back to the pool."""
        await self._read(response, ERROR_BODY)

    async def _unexpected(self, method: str, url: str, response: IResponse) -> HTTPStatusError:
        """The error for an answer the caller did not expect, with the start of its body (if it can be read)."""
        try:
            body = await self._read(response, ERROR_BODY)
        except Exception:
            body = b""
        return HTTPStatusError(method, url, response.code, body)

    async def _call(
        self, method: str, url: str, expected: frozenset[int], limit: int | None = None, **kwargs: Any
    ) -> tuple[int, bytes]:
        """One request whose body is read whole. A status outside
        ``expected`` raises ``HTTPStatusError`` (so 502, 503 and 504 are
        retried by a caller's ``_retrying``)."""
        response = await self._request(method, url, **kwargs)
        body = await self._read(response, limit)
        if response.code not in expected:
            raise HTTPStatusError(method, url, response.code, body)
        return response.code, body
