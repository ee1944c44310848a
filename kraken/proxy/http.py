"""The proxy's HTTP app: the read-write registry API (``RegistryAPI``) over
``ProxySource``, with the limits of the ``registry:`` section of its config.

Everything the proxy's listener serves is put together here, so this is
where the proxy's next routes and policies go: authentication (Basic or
Bearer) is handed to the registry API here and wraps its one ``/v2`` route
(``RegistryAPI._root``), and a notifications route will be served beside
the registry API from here. ``kraken.proxy.tap`` builds the site and the
listener around what this returns.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from kraken.proxy.config import LimitsConfig, RegistryConfig
from kraken.registry.http import RegistryAPI
from kraken.registry.references import ReferencePolicy
from kraken.registry.sessions import UploadLimits
from kraken.registry.source import IRegistrySource
from kraken.store import UploadArea


def proxy_api(
    source: IRegistrySource,
    uploads: UploadArea,
    *,
    clock: IReactorTime,
    config: RegistryConfig,
    limits: LimitsConfig | None = None,
) -> RegistryAPI:
    """The registry API the proxy serves (normally over a ``ProxySource``), with the upload ``limits``."""
    api = RegistryAPI(
        source,
        uploads,
        clock=clock,
        max_manifest_size=config.max_manifest_size,
        max_page_size=config.max_page,
        references=ReferencePolicy(
            max_references=config.max_references,
            batch=config.check_batch,
            concurrency=config.check_concurrency,
        ),
    )
    if limits is not None:
        api.sessions.limits = UploadLimits(
            max_blob_size=limits.max_blob_size,
            max_sessions=limits.max_upload_sessions,
            max_sessions_per_client=limits.max_upload_sessions_per_client,
        )
    return api
