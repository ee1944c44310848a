"""The build-index's configuration (``etc/kraken/build-index.yaml``)."""

from __future__ import annotations

import attrs

from kraken.config import Size, positive
from kraken.net import HTTPClientConfig
from kraken.net.endpoints import check_listen


@attrs.frozen
class BuildIndexConfig:
    # Endpoint description of the HTTP API (tcp:, ssl:, unix:, systemd: ...).
    listen_http: str = attrs.field(default="tcp:15004:interface=127.0.0.1", validator=check_listen)
    # Base URL of the origin (cluster) that holds manifests and blobs.
    origin: str = "http://127.0.0.1:15002"
    # The SQLite database of tags and manifest records; its directory is created.
    database: str = "/var/lib/kraken/build-index/tags.db"
    http_client: HTTPClientConfig = attrs.field(factory=HTTPClientConfig)
    # Largest manifest read from the origin when checking a tag.
    max_manifest_size: Size = attrs.field(default=Size(4 << 20), validator=positive)
    # Largest page a listing returns, whatever ``n`` asks for.
    max_page: int = attrs.field(default=1000, validator=positive)
