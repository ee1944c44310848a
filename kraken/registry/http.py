"""The Docker Registry HTTP API v2 / OCI distribution API, as a Klein app.

``RegistryAPI`` is the one object a daemon builds (the proxy read-write, the
agent read-only). It owns the plumbing every endpoint shares and nothing
else: one catch-all Klein route for ``/v2`` (``_root``), whose path
``kraken.registry.routing`` matches (repository names contain slashes, so
Klein's own routes cannot), and a table from (route, method) to the handlers
by resource: ``http_blobs``, ``http_uploads`` (with the upload sessions of
``kraken.registry.sessions``), ``http_manifests`` and ``http_listings``.

``_root`` is the one place every API request passes through: what concerns
every endpoint (authentication, metrics later) wraps the dispatch
there. ``/health`` is outside ``/v2`` and outside that wrapper.

Every protocol failure is a ``RegistryError`` rendered by the single
``handle_errors`` handler as OCI error JSON; a full disk (ENOSPC, EDQUOT) is
507 ``InsufficientStorage``; anything else unexpected is logged and answered
as 500 UNKNOWN; ``CancelledError`` (client gone) propagates. An upload body
the spool could not write is answered by ``body_refused``
(``make_site(body_refused=...)``) before the handler runs, and a path that
is not UTF-8 by ``not_utf8``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from kraken.files import errno_name, is_out_of_space
from kraken.net.server import Refusal
from kraken.registry.auth import RegistryAuth
from kraken.registry.errors import (
    JSON_CONTENT_TYPE,
    InsufficientStorage,
    NameInvalid,
    RegistryError,
    Unknown,
    Unsupported,
)
from kraken.registry.http_blobs import BlobHandlers
from kraken.registry.http_listings import ListingHandlers
from kraken.registry.http_manifests import ManifestHandlers
from kraken.registry.http_uploads import UploadHandlers, too_large
from kraken.registry.messages import json_body, text
from kraken.registry.names import check_name
from kraken.registry.references import ReferencePolicy
from kraken.registry.routing import WRITE_METHODS, match_route
from kraken.registry.sessions import UploadSessions
from kraken.registry.source import IRegistrySource
from kraken.store.spool import BodyTooLarge
from kraken.store.uploads import UploadArea

API_VERSION = b"registry/2.0"
DEFAULT_MAX_MANIFEST_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_PAGE_SIZE = 1000
DEFAULT_READ_ONLY_MESSAGE = "this registry is read-only: push to the Kraken proxy"

#: A handler answers one (route, method): ``(request, repository name, route argument)``.
Handler = Callable[[IRequest, str, str], Awaitable[Any]]


class RegistryAPI:
    """The registry API over an ``IRegistrySource``.

    ``uploads`` holds blob uploads in progress; it may be None only when
    ``read_only`` (the agent), where every write answers 405 UNSUPPORTED
    with ``read_only_message``. ``auth`` (``kraken.registry.auth``), when
    given, checks every request to an endpoint before its handler runs.
    """

    app = Klein()
    log = Logger()

    def __init__(
        self,
        source: IRegistrySource,
        uploads: UploadArea | None,
        *,
        clock: IReactorTime,
        read_only: bool = False,
        max_manifest_size: int = DEFAULT_MAX_MANIFEST_SIZE,
        read_only_message: str = DEFAULT_READ_ONLY_MESSAGE,
        max_page_size: int = DEFAULT_MAX_PAGE_SIZE,
        references: ReferencePolicy | None = None,
        auth: RegistryAuth | None = None,
    ) -> None:
        if uploads is None and not read_only:
            raise ValueError("a writable registry needs an UploadArea")
        if max_page_size < 1:
            raise ValueError("max_page_size must be at least 1")
        self._read_only = read_only
        self._auth = auth
        self._read_only_message = read_only_message
        self.sessions = UploadSessions(uploads, clock=clock, read_only_message=read_only_message)
        blobs = BlobHandlers(source)
        uploading = UploadHandlers(source, self.sessions, clock=clock)
        manifests = ManifestHandlers(
            source, references=references or ReferencePolicy(), max_manifest_size=max_manifest_size
        )
        listings = ListingHandlers(source, max_page_size=max_page_size)
        # HEAD is answered as GET (twisted.web drops the body).
        self._handlers: dict[str, dict[bytes, Handler]] = {
            "base": {b"GET": _base},
            "catalog": {b"GET": listings.catalog},
            "tags": {b"GET": listings.tags},
            "referrers": {b"GET": listings.referrers},
            "manifest": {b"GET": manifests.get, b"PUT": manifests.put, b"DELETE": _refuse("manifest deletion")},
            "blob": {b"GET": blobs.get, b"DELETE": _refuse("blob deletion")},
            "upload_start": {b"POST": uploading.start},
            "upload": {
                b"GET": uploading.status,
                b"PATCH": uploading.patch,
                b"PUT": uploading.finish,
                b"DELETE": uploading.cancel,
            },
        }

    def resource(self) -> IResource:
        """The Klein resource serving the whole API (paths start with ``/v2``)."""
        return self.app.resource()

    def expire_uploads(self, now: float, max_age: float) -> Deferred[list[str]]:
        """Delete uploads untouched for ``max_age`` seconds and forget their
        sessions; for a ``TimerService``. Never fails: errors are logged."""
        return Deferred.fromCoroutine(self.sessions.expire(now, max_age))

    @app.handle_errors(RegistryError)
    def _registry_error(self, request: IRequest, failure: Failure) -> bytes:
        err = failure.value
        assert isinstance(err, RegistryError)
        body = err.body()
        request.setResponseCode(err.status)
        request.setHeader(b"docker-distribution-api-version", API_VERSION)
        for k, v in err.headers.items():
            request.setHeader(k.encode("latin-1"), v.encode("latin-1"))
        request.setHeader(b"content-type", JSON_CONTENT_TYPE)
        request.setHeader(b"content-length", b"%d" % len(body))
        self.log.debug(
            "{method} {path} failed: {status} {code} {message}",
            method=text(request.method),
            path=text(request.path),
            status=err.status,
            code=err.code,
            message=err.message,
        )
        return body

    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request: IRequest) -> bytes:
        """Liveness for load balancers and supervisors (outside /v2)."""
        request.setHeader(b"content-type", b"text/plain")
        return b"OK\n"

    @app.route("/", branch=True)
    async def _root(self, request: IRequest) -> Any:
        """Every API request comes through here: the one place where what
        concerns every endpoint (auth, metrics) wraps the dispatch."""
        request.setHeader(b"docker-distribution-api-version", API_VERSION)
        try:
            route = match_route(request.path) if self._auth is not None else None
            if self._auth is not None and route is not None:
                await self._auth.check(request, route)
            return await self._dispatch(request)
        except (RegistryError, CancelledError):
            raise
        except Exception as e:
            if is_out_of_space(e):
                raise _no_space(e) from None
            self.log.failure(
                "unhandled error serving {method} {path}", method=text(request.method), path=text(request.path)
            )
            raise Unknown() from None

    async def _dispatch(self, request: IRequest) -> Any:
        method = request.method
        if self._read_only and method in WRITE_METHODS:
            raise Unsupported(self._read_only_message)
        route = match_route(request.path)
        if route is None:
            raise Unsupported("no such API endpoint", status=404, detail={"path": text(request.path)})
        if method not in route.allowed:
            raise Unsupported(
                f"{text(method)} is not supported here",
                headers={"Allow": ", ".join(m.decode() for m in route.allowed)},
            )
        name = check_name(route.name) if route.has_name else ""
        handler = self._handlers[route.kind][b"GET" if method == b"HEAD" else method]
        return await handler(request, name, route.arg)

    def body_refused(self, method: bytes, path: bytes, failure: Failure) -> Deferred[Refusal]:
        """How the site answers an upload body it could not store
        (``kraken.net.server.BodyRefused``): OCI JSON (507 when the disk is
        full, else 500 UNKNOWN), once an upload it was for is deleted with its
        session (the handler, which would have, never runs)."""
        return Deferred.fromCoroutine(self._refuse_body(path, failure))

    async def _refuse_body(self, path: bytes, failure: Failure) -> Refusal:
        route = match_route(path.split(b"?", 1)[0])
        if route is not None and route.kind == "upload":
            await self.sessions.drop_refused(route.name, route.arg)
        e = failure.value
        error: RegistryError
        error = _no_space(e) if e is not None and is_out_of_space(e) else Unknown("could not store the request body")
        if isinstance(e, BodyTooLarge):
            error = too_large(e.limit, e.received)
        return _refusal(error)

    def not_utf8(self) -> Refusal:
        """The answer to a request whose path is not UTF-8 once percent-decoded (``make_site(not_utf8=...)``):
        no repository name, tag or digest can be spelled that way."""
        return _refusal(NameInvalid("the request path is not UTF-8 once percent-decoded"))


async def _base(request: IRequest, name: str, arg: str) -> bytes:
    return json_body(request, {})


def _refuse(what: str) -> Handler:
    async def refuse(request: IRequest, name: str, arg: str) -> bytes:
        raise Unsupported(f"{what} is not supported")

    return refuse


def _no_space(error: BaseException) -> InsufficientStorage:
    return InsufficientStorage(detail={"reason": errno_name(error)})


def _refusal(error: RegistryError) -> Refusal:
    """``error`` as the site answers it before any handler runs."""
    return Refusal(
        error.status,
        [(b"Content-Type", JSON_CONTENT_TYPE), (b"Docker-Distribution-Api-Version", API_VERSION)],
        error.body(),
    )
