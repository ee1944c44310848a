"""The proxy's configuration (``etc/kraken/proxy.yaml``)."""

from __future__ import annotations

import attrs

from kraken.config import Duration, Size, positive
from kraken.net import HTTPClientConfig
from kraken.net.endpoints import check_listen
from kraken.origin.client import check_origins


@attrs.frozen
class UploadsConfig:
    # Uploads in progress; the proxy keeps no other blob data.
    root: str = "/var/lib/kraken/proxy/uploads"
    # An upload untouched this long is deleted.
    ttl: Duration = attrs.field(default=Duration(3600.0), validator=positive)


@attrs.frozen
class RegistryConfig:
    max_manifest_size: Size = attrs.field(default=Size(4 << 20), validator=positive)
    # The largest page tags/list and _catalog return, whatever n asks for.
    max_page: int = attrs.field(default=1000, validator=positive)


@attrs.frozen
class ProxyConfig:
    listen_http: str = attrs.field(default="tcp:15000:interface=127.0.0.1", validator=check_listen)
    # Base URL of an origin, or a list of them: the origin cluster that takes blobs
    # (any member knows where each blob lives; the others are asked when one does not answer).
    origin: str | tuple[str, ...] = attrs.field(default="http://127.0.0.1:15002", validator=check_origins)
    build_index: str = "http://127.0.0.1:15004"
    uploads: UploadsConfig = attrs.field(factory=UploadsConfig)
    registry: RegistryConfig = attrs.field(factory=RegistryConfig)
    io_threads: int = attrs.field(default=4, validator=positive)
    http_client: HTTPClientConfig = attrs.field(factory=HTTPClientConfig)
