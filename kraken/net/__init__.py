"""Outgoing HTTP: the treq client factory, bounded bodies, retries, TLS."""

from kraken.net.client import (
    HTTPClientConfig,
    HTTPClientService,
    HTTPStatusError,
    ResponseTooLarge,
    limited_content,
    make_http_client,
)
from kraken.net.retry import RetryPolicy, with_retries

__all__ = [
    "HTTPClientConfig",
    "HTTPClientService",
    "HTTPStatusError",
    "ResponseTooLarge",
    "RetryPolicy",
    "limited_content",
    "make_http_client",
    "with_retries",
]
