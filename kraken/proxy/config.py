"""The proxy's configuration (``etc/kraken/proxy.yaml``)."""

from __future__ import annotations

import attrs

from kraken.config import Duration, Size, positive
from kraken.net import HTTPClientConfig
from kraken.net.endpoints import check_listen
from kraken.net.tls import TLSConfig
from kraken.origin.client import MAX_STAT_BATCH, check_origins
from kraken.registry.references import DEFAULT_CHECK_BATCH, DEFAULT_CHECK_CONCURRENCY, DEFAULT_MAX_REFERENCES


@attrs.frozen
class UploadsConfig:
    # Uploads in progress; the proxy keeps no other blob data.
    root: str = "/var/lib/kraken/proxy/uploads"
    # An upload untouched this long is deleted.
    ttl: Duration = attrs.field(default=Duration(3600.0), validator=positive)


def _check_batch(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= MAX_STAT_BATCH:
        raise ValueError(
            f"{attribute.name} must be from 1 to {MAX_STAT_BATCH} (what an origin answers at once), not {value}"
        )


@attrs.frozen
class RegistryConfig:
    max_manifest_size: Size = attrs.field(default=Size(4 << 20), validator=positive)
    # The largest page tags/list and _catalog return, whatever n asks for.
    max_page: int = attrs.field(default=1000, validator=positive)
    # A pushed manifest naming more blobs and child manifests than this is refused
    # (400 MANIFEST_INVALID) before any of them is looked up.
    max_references: int = attrs.field(default=DEFAULT_MAX_REFERENCES, validator=positive)
    # Blob digests per question to the origin when checking that a manifest's references exist.
    check_batch: int = attrs.field(default=DEFAULT_CHECK_BATCH, validator=_check_batch)
    # Requests one manifest's check may have in flight.
    check_concurrency: int = attrs.field(default=DEFAULT_CHECK_CONCURRENCY, validator=positive)


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
    # TLS for this daemon's listeners and clients (kraken.net.tls; absent: plain).
    tls: TLSConfig = attrs.field(factory=TLSConfig)
