"""HTTP plumbing. Outgoing: the treq client factory and the one place for TLS client options
(``client.make_http_client``), the one client base (``service.ServiceClient``: timeouts, bounded bodies,
draining, unexpected statuses), the one retry policy (``retry``), request bodies from files (``body``) and
bounded concurrency (``bounded``), TLS both ways (``tls``). Incoming: the Site and listeners (``server``)."""

from kraken.net.client import (
    HTTPClientConfig,
    HTTPClientService,
    HTTPStatusError,
    ResponseTooLarge,
    limited_content,
    make_http_client,
)
from kraken.net.retry import RetryPolicy, with_retries
from kraken.net.tls import ReloadOnSIGHUP, TLSConfig, TLSContexts

__all__ = [
    "HTTPClientConfig",
    "HTTPClientService",
    "HTTPStatusError",
    "ReloadOnSIGHUP",
    "ResponseTooLarge",
    "RetryPolicy",
    "TLSConfig",
    "TLSContexts",
    "limited_content",
    "make_http_client",
    "with_retries",
]
