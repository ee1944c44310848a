"""The one retry policy: which failures are worth another try, and exponential backoff on the injected clock.

Every retry loop in the house is ``with_retries``: the components' clients and the storage backends (through
``kraken.net.service.ServiceClient``), the rounds of ``kraken.cluster.failover.Failover`` and the build-index's
duplicate sends (each with its own ``retryable`` and log line).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectError, ConnectionClosed, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web._newclient import RequestNotSent, RequestTransmissionFailed, ResponseNeverReceived

from kraken.net.client import HTTPClientConfig, HTTPStatusError

T = TypeVar("T")
#: Told (the error, how many tries so far, the delay before the next) instead of the default log line.
OnRetry = Callable[[Exception, int, float], None]
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
    """How often to try, and how long to wait between tries: ``backoff``, growing by ``factor``, at most
    ``max_backoff``."""

    attempts: int = 4  # total tries, the first included
    backoff: float = 0.25
    factor: float = 2.0
    max_backoff: float = 5.0

    @classmethod
    def from_config(cls, config: HTTPClientConfig) -> RetryPolicy:
        """The policy of an ``http_client`` block: ``retries`` after the first try."""
        return cls(attempts=config.retries + 1, backoff=config.backoff, max_backoff=config.max_backoff)

    def delay(self, retry: int) -> float:
        """The wait before retry number ``retry`` (0 for the first)."""
        return min(self.max_backoff, self.backoff * self.factor**retry)

    def delays(self) -> list[float]:
        """The waits before each retry, in turn."""
        return [self.delay(i) for i in range(self.attempts - 1)]


def is_retryable(exc: BaseException) -> bool:
    """A network error, or a 429/502/503/504."""
    if isinstance(exc, HTTPStatusError):
        return exc.code in RETRYABLE_STATUS
    return isinstance(exc, NETWORK_ERRORS)


async def with_retries(
    clock: IReactorTime,
    policy: RetryPolicy,
    what: str,
    attempt: Callable[[], Awaitable[T]],
    *,
    retryable: Callable[[Exception], bool] = is_retryable,
    on_retry: OnRetry | None = None,
) -> T:
    """Call ``attempt`` until it succeeds, at most ``policy.attempts`` times,
    retrying the errors ``retryable`` accepts (by default network errors and
    429/502/503/504) after the policy's delays; other errors, the last one
    and ``CancelledError`` propagate at once. Each retry is logged (or told
    to ``on_retry``)."""
    delays = policy.delays()
    tries = 0
    while True:
        tries += 1
        try:
            return await attempt()
        except CancelledError:
            raise
        except Exception as e:
            if not delays or not retryable(e):
                raise
            delay = delays.pop(0)
            if on_retry is None:
                log.warn("{what} failed ({error}); retrying in {delay:.2f}s", what=what, error=str(e), delay=delay)
            else:
                on_retry(e, tries, delay)
            await deferLater(clock, delay, lambda: None)
