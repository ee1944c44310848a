"""Retries with exponential backoff, scheduled on the injected clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
from twisted.internet.error import ConnectError, ConnectionClosed, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web._newclient import RequestNotSent, RequestTransmissionFailed, ResponseNeverReceived

from kraken.net.client import HTTPStatusError

T = TypeVar("T")
log = Logger()

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
NETWORK_ERRORS = (
    ConnectError,
    ConnectionClosed,
    DNSLookupError,
    TimeoutError,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseNeverReceived,
)


@attrs.frozen
class RetryPolicy:
    attempts: int = 4  # total tries, the first included
    backoff: float = 0.25
    factor: float = 2.0
    max_backoff: float = 5.0

    def delays(self) -> list[float]:
        return [min(self.max_backoff, self.backoff * self.factor**i) for i in range(self.attempts - 1)]


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, HTTPStatusError):
        return exc.code in RETRYABLE_STATUS
    return isinstance(exc, NETWORK_ERRORS)


async def with_retries(clock: IReactorTime, policy: RetryPolicy, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Call ``attempt`` until it succeeds, retrying network errors and
    429/502/503/504 after growing delays; other errors propagate at once."""
    delays = policy.delays()
    while True:
        try:
            return await attempt()
        except Exception as e:
            if not delays or not is_retryable(e):
                raise
            delay = delays.pop(0)
            log.warn("{what} failed ({error}); retrying in {delay:.2f}s", what=what, error=str(e), delay=delay)
            await deferLater(clock, delay, lambda: None)
