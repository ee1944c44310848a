"""The proxy's HTTP app: the read-write registry API (``RegistryAPI``) over
``ProxySource``, with the limits of the ``registry:`` section of its config
and the authentication of its ``auth:`` section.

Everything the proxy's listener serves is put together here, so this is
where the proxy's next routes and policies go: authentication (Basic or
Bearer, ``kraken.registry.auth``) is handed to the registry API here and
wraps its one ``/v2`` route (``RegistryAPI._root``), and the preheat routes
(``/registry/notifications``, ``/registry/preheat``: ``kraken.proxy.preheat``)
are served beside the registry API (``beside``).
``kraken.proxy.tap`` builds the site and the listener around what this
returns.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from kraken.proxy.config import AuthConfig, LimitsConfig, RegistryConfig
from kraken.registry.auth import BasicCredentials, BearerCredentials, Credentials, RegistryAuth
from kraken.registry.htpasswd import HtpasswdFile
from kraken.registry.http import RegistryAPI
from kraken.registry.references import ReferencePolicy
from kraken.registry.sessions import UploadLimits
from kraken.registry.source import IRegistrySource
from kraken.registry.tokens import TokenKeys, TokenVerifier
from kraken.store import UploadArea
from kraken.workers import Worker

log = Logger(namespace="kraken.proxy")


def proxy_api(
    source: IRegistrySource,
    uploads: UploadArea,
    *,
    clock: IReactorTime,
    config: RegistryConfig,
    limits: LimitsConfig | None = None,
    auth: RegistryAuth | None = None,
) -> RegistryAPI:
    """The registry API the proxy serves (normally over a ``ProxySource``), with the upload ``limits`` and
    the gate ``auth`` (``registry_auth``; None: no authentication)."""
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
        auth=auth,
    )
    if limits is not None:
        api.sessions.limits = UploadLimits(
            max_blob_size=limits.max_blob_size,
            max_sessions=limits.max_upload_sessions,
            max_sessions_per_client=limits.max_upload_sessions_per_client,
        )
    return api


class _Beside(Resource):
    isLeaf = True

    def __init__(self, api: IResource, preheat: IResource) -> None:
        super().__init__()
        self._api = api
        self._preheat = preheat

    def render(self, request: IRequest) -> bytes | int:
        chosen = self._preheat if request.path.startswith(PREHEAT_PREFIX) else self._api
        return chosen.render(request)


#: The paths ``beside`` sends to the preheat routes.
PREHEAT_PREFIX = b"/registry/"


def beside(api: IResource, preheat: IResource) -> IResource:
    """One resource serving ``preheat`` (``PreheatAPI.resource``) for paths under ``/registry/`` and ``api``
    (``RegistryAPI.resource``) for every other path. Both are Klein (leaf) resources."""
    return _Beside(api, preheat)


def registry_auth(config: AuthConfig, *, clock: IReactorTime, worker: Worker) -> RegistryAuth | None:
    """The gate ``config`` describes, or None when authentication is off; ``worker`` runs the bcrypt
    checks of Basic auth. ``RegistryAuth.reload`` reads its files again (the tap calls it on SIGHUP)."""
    credentials: Credentials
    if config.token is not None:
        token = config.token
        keys = TokenKeys(token.certificate_files)
        verifier = TokenVerifier(
            keys.keys, issuer=token.issuer, audience=token.audience or token.service, leeway=token.leeway
        )
        credentials = BearerCredentials(verifier, realm=token.realm, service=token.service, clock=clock, keys=keys)
        log.info(
            "registry auth: bearer tokens from {realm} (service {service})", realm=token.realm, service=token.service
        )
    elif config.htpasswd:
        rules = config.rules()
        credentials = BasicCredentials(HtpasswdFile(config.htpasswd), config.realm, worker, rules)
        log.info(
            "registry auth: HTTP Basic, users from {path}, {access}",
            path=config.htpasswd,
            access=f"{len(rules.rules)} access rules" if rules else "every user may pull and push everything",
        )
    else:
        return None
    return RegistryAuth(credentials, anonymous_pull=config.anonymous_pull)
