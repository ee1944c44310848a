"""An upstream Docker registry as a read-only backend (pull-through), Kraken's
``registry_blob`` and ``registry_tag``.

Blobs of the repository ``namespace`` are read from the upstream's
distribution API (distribution ``docs/spec/api.md``):

- ``stat``: ``HEAD {address}/v2/<namespace>/blobs/sha256:<hex>``; the size is
  its ``Content-Length``. On a 404 it tries
  ``/v2/<namespace>/manifests/sha256:<hex>`` (with the manifest ``Accept``
  header), as Kraken does: manifests are blobs to kraken. 404 on both ->
  ``BlobNotFound``.
- ``download``: ``GET`` of the same URL, streamed to a temporary file by the
  worker and renamed over the target. Redirects (a registry whose storage
  is S3 answers 307 to a signed URL) are followed, without credentials.
- ``resolve_tag(repo, tag)``: ``GET /v2/<repo>/manifests/<tag>`` with the
  ``Accept`` header of the four manifest media types; the digest is the
  ``Docker-Content-Digest`` header, or the SHA-256 of the body without one.
- ``upload`` and ``list`` raise ``BackendError`` ("read-only").

Auth (distribution ``docs/spec/auth/token.md``): requests go out
unauthenticated (or with a cached token) and a 401 is answered once:

- ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``: a token is
  fetched with ``GET realm?service=...&scope=...`` (with basic credentials
  when ``username`` is set), cached per scope until its ``expires_in``
  (default 60 s) has passed on the injected clock, and the request retried
  once with ``Authorization: Bearer``;
- ``WWW-Authenticate: Basic``: retried once with the basic credentials,
  which are then sent up front to this registry.

A second 401, or a 401 without usable credentials, is a ``BackendError``.
``address`` is ``host:port`` (``https`` unless ``tls: false``) or a URL
whose scheme wins.
"""

from __future__ import annotations

import base64
import json
import re
from typing import TypeVar
from urllib.parse import urlencode, urljoin, urlsplit

import attrs
import yaml
from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IResponse
from zope.interface import implementer

from kraken.backends.base import (
    DEFAULT_LIST_LIMIT,
    BackendError,
    BlobInfo,
    BlobNotFound,
    IBackend,
    ListPage,
)
from kraken.backends.http import content_length, read_only
from kraken.backends.names import blob_digest
from kraken.backends.remote import RemoteBackend, stream_to_file
from kraken.config import Duration
from kraken.core import Digest, DigestError
from kraken.net.client import HTTPClientConfig, HTTPStatusError
from kraken.net.service import ERROR_BODY, name_path
from kraken.store.growing import GrowingFile
from kraken.workers import Worker

T = TypeVar("T")
log = Logger()

# The manifest media types a tag may point at (Kraken's registry_tag asks for these four).
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)
ACCEPT = ", ".join(MANIFEST_TYPES)
MAX_MANIFEST = 4 << 20  # distribution's own limit on a manifest body
MAX_TOKEN_BODY = 1 << 20
MAX_REDIRECTS = 5
DEFAULT_TOKEN_LIFETIME = 60.0  # seconds, distribution's token spec default
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*(?:,|$)')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        m = _PARAM.match(rest, position)
        if m is None or m.end() == position:
            break
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        position = m.end()
    return scheme.lower(), params


def _address_url(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value:
        raise ValueError("address must name the registry (host:port or a URL)")
    if "://" in value and urlsplit(value.replace(NS_FIELD, "ns")).scheme not in ("http", "https"):
        raise ValueError(f"address must be host:port or an http:// or https:// URL, not {value!r}")


NS_FIELD = "{ns}"  # in ``address`` with ``ns_prefix``: the registry host the repository name starts with


@attrs.frozen
class RegistryConfig:
    """YAML: ``backends: [{namespace: ..., registry: {address: "registry-1.docker.io", username: ...}}]``."""

    # host:port (scheme from ``tls``), or http(s)://host:port.
    address: str = attrs.field(validator=_address_url)
    tls: bool = True
    # Basic credentials, sent on a Basic challenge or to the token realm of a Bearer one.
    username: str = ""
    password: str = attrs.field(default="", repr=False)
    # A YAML file {username: ..., password: ...} read at start, instead of username and password here.
    credentials_file: str = ""
    # The repository names start with the registry host containerd named in ``?ns=`` (the agent's
    # ``upstream_namespaces``: docker.io/library/alpine); that component is left out of the requests to
    # this registry, and stands for ``{ns}`` in ``address`` (https://{ns} serves any host a pattern allows).
    ns_prefix: bool = False
    # How long a tag read from this registry is remembered (0: asked at every lookup).
    tag_ttl: Duration = Duration(0.0)
    http_client: HTTPClientConfig = HTTPClientConfig()
    _file_credentials: tuple[str, str] | None = attrs.field(init=False, default=None, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.password and not self.username:
            raise ValueError("a password needs a username")
        if self.credentials_file:
            if self.username:
                raise ValueError("set either username and password or credentials_file, not both")
            object.__setattr__(self, "_file_credentials", read_credentials(self.credentials_file))
        if NS_FIELD in self.address and not self.ns_prefix:
            raise ValueError(f"address {self.address!r} uses {NS_FIELD}, which needs ns_prefix: true")

    def base_url(self) -> str:
        if "://" in self.address:
            return self.address.rstrip("/")
        return f"{'https' if self.tls else 'http'}://{self.address.rstrip('/')}"

    def credentials(self) -> tuple[str, str] | None:
        """(username, password), from the config or ``credentials_file``; None without any."""
        if self._file_credentials is not None:
            return self._file_credentials
        return (self.username, self.password) if self.username else None

    def basic(self) -> str | None:
        credentials = self.credentials()
        if credentials is None:
            return None
        token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode("ascii")
        return f"Basic {token}"


def read_credentials(path: str) -> tuple[str, str]:
    """(username, password) from a YAML file ``{username: ..., password: ...}``; ValueError naming the file
    when it cannot be read or holds anything else."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"credentials_file {path!r} cannot be read: {e}") from None
    if not isinstance(doc, dict) or set(doc) != {"username", "password"}:
        raise ValueError(f"credentials_file {path!r} must hold exactly the keys username and password")
    username, password = doc["username"], doc["password"]
    if not isinstance(username, str) or not username or not isinstance(password, str):
        raise ValueError(f"credentials_file {path!r}: username must be non-empty text, password text")
    return username, password


@attrs.define
class _AuthState:
    """What the backend learnt about the registry's auth: tokens per scope, and whether it wants basic."""

    tokens: dict[str, tuple[str, float]] = attrs.field(factory=dict)  # scope -> (token, expiry)
    basic: bool = False


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


@implementer(IBackend)
@attrs.frozen
class RegistryBackend(RemoteBackend):
    """``IBackend`` over an upstream registry, read-only. Build it with ``RegistryBackend.create``."""

    _settings: RegistryConfig
    _worker: Worker
    _auth: _AuthState = attrs.field(factory=_AuthState)

    @classmethod
    def create(
        cls, config: RegistryConfig, *, http: HTTPClient, clock: IReactorTime, worker: Worker
    ) -> RegistryBackend:
        """The backend for ``config``, over ``http`` (the daemon's client; its pool is closed by the daemon)."""
        return cls(http, config.base_url(), clock, config.http_client, settings=config, worker=worker)

    # -- plumbing --

    def _authorization(self, scope: str) -> str | None:
        cached = self._auth.tokens.get(scope)
        if cached is not None:
            token, expiry = cached
            if self._clock.seconds() < expiry:
                return f"Bearer {token}"
            del self._auth.tokens[scope]
        if self._auth.basic:
            return self._settings.basic()
        return None

    async def _send(self, method: str, url: str, scope: str, headers: dict[str, str] | None = None) -> IResponse:
        """One request with whatever credentials are known for ``scope``; a
        401 is answered (token or basic) and the request retried once.
        Redirects are followed without credentials."""
        headers = dict(headers or {})
        authorization = self._authorization(scope)
        response = await self._one(method, url, headers, authorization)
        if response.code == 401:
            challenges = response.headers.getRawHeaders(b"www-authenticate") or []
            await self._drain(response)
            authorization = await self._answer(challenges, scope, url)
            response = await self._one(method, url, headers, authorization)
            if response.code == 401:
                await self._drain(response)
                raise BackendError(f"{method} {url}: unauthorized, even with credentials")
        for _ in range(MAX_REDIRECTS):
            if response.code not in _REDIRECTS:
                return response
            locations = response.headers.getRawHeaders(b"location")
            await self._drain(response)
            if not locations:
                raise BackendError(f"{method} {url}: HTTP {response.code} without a Location")
            url = urljoin(url, locations[0].decode("latin-1"))
            response = await self._one(method, url, headers, None)
        raise BackendError(f"{method} {url}: more than {MAX_REDIRECTS} redirects")

    async def _one(self, method: str, url: str, headers: dict[str, str], authorization: str | None) -> IResponse:
        sent = dict(headers)
        if authorization is not None:
            sent["Authorization"] = authorization
        return await self._request(method, url, headers={k: [v] for k, v in sent.items()})

    async def _answer(self, challenges: list[bytes], scope: str, url: str) -> str:
        """The Authorization that answers one of ``challenges`` (Bearer preferred)."""
        parsed = [parse_challenge(c.decode("latin-1")) for c in challenges]
        for scheme, params in parsed:
            if scheme == "bearer" and params.get("realm"):
                return f"Bearer {await self._token(params, scope)}"
        for scheme, _ in parsed:
            if scheme == "basic":
                basic = self._settings.basic()
                if basic is None:
                    raise BackendError(f"{url}: the registry wants basic auth and no username is configured")
                self._auth.basic = True
                return basic
        raise BackendError(f"{url}: unauthorized, and no usable WWW-Authenticate challenge: {challenges!r}")

    async def _token(self, params: dict[str, str], scope: str) -> str:
        """A bearer token from the challenge's realm, cached for ``scope`` until it expires."""
        query = {k: params[k] for k in ("service",) if params.get(k)}
        query["scope"] = params.get("scope") or scope
        realm = params["realm"]
        if urlsplit(realm).scheme not in ("http", "https"):
            raise BackendError(f"the token realm is not an http(s) URL: {realm!r}")
        url = f"{realm}{'&' if '?' in realm else '?'}{urlencode(query)}"
        headers: dict[str, list[str]] = {}
        basic = self._settings.basic()
        if basic is not None:
            headers["Authorization"] = [basic]
        response = await self._request("GET", url, headers=headers)
        body = await self._read(response, MAX_TOKEN_BODY)
        if response.code == 401:
            raise BackendError(f"the token server {realm} refused the credentials (HTTP 401)")
        if response.code != 200:
            raise HTTPStatusError("GET", url, response.code, body)
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            raise BackendError(f"the token server {realm} answered with malformed JSON") from None
        if not isinstance(token, str) or not token:
            raise BackendError(f"the token server {realm} answered without a token")
        self._auth.tokens[scope] = (token, self._clock.seconds() + lifetime)
        return token

    def _url(self, repo: str, kind: str, reference: str) -> str:
        return f"{self._base}/v2/{name_path(repo)}/{kind}/{reference}"

    # -- IBackend --

    async def stat(self, namespace: str, name: str) -> BlobInfo:
        digest = str(blob_digest(name))
        scope = pull_scope(namespace)

        async def attempt() -> BlobInfo:
            for kind, headers in (("blobs", {}), ("manifests", {"Accept": ACCEPT})):
                url = self._url(namespace, kind, digest)
                response = await self._send("HEAD", url, scope, headers)
                await self._drain(response)
                if response.code == 404:
                    continue
                if response.code != 200:
                    raise HTTPStatusError("HEAD", url, response.code)
                return BlobInfo(size=content_length(response, f"HEAD {url}"))
            raise BlobNotFound(namespace, name)

        return await self._op(f"stat {digest} in {namespace}", attempt)

    async def download(self, namespace: str, name: str, path: str) -> None:
        await self.download_growing(namespace, name, path, None)

    async def download_growing(self, namespace: str, name: str, path: str, growing: GrowingFile | None) -> None:
        """``download``, telling ``growing`` (if given) each byte on disk (``remote.stream_to_file``)."""
        digest = str(blob_digest(name))
        scope = pull_scope(namespace)

        async def attempt() -> int:
            for kind, headers in (("blobs", {}), ("manifests", {"Accept": ACCEPT})):
                url = self._url(namespace, kind, digest)
                response = await self._send("GET", url, scope, headers)
                if response.code == 404:
                    await self._drain(response)
                    continue
                if response.code != 200:
                    body = await self._read(response, ERROR_BODY)
                    raise HTTPStatusError("GET", url, response.code, body)
                return await stream_to_file(
                    response,
                    path,
                    worker=self._worker,
                    clock=self._clock,
                    timeout=self._config.timeout,
                    prefix=".kraken-registry-",
                    growing=growing,
                )
            raise BlobNotFound(namespace, name)

        size = await self._op(f"get {digest} from {namespace}", attempt)
        log.debug(
            "downloaded {digest} from {namespace} ({bytes} bytes)", digest=digest, namespace=namespace, bytes=size
        )

    async def upload(self, namespace: str, name: str, path: str) -> None:
        raise read_only("registry", "upload")

    async def list(
        self, prefix: str = "", *, continuation: str | None = None, limit: int = DEFAULT_LIST_LIMIT
    ) -> ListPage:
        raise read_only("registry", "list")

    # -- tags --

    async def resolve_tag(self, repo: str, tag: str) -> Digest:
        """The digest of the manifest ``repo:tag`` points at. Raises
        ``BlobNotFound`` (name ``repo:tag``) when the upstream has no such tag."""
        url = self._url(repo, "manifests", tag)

        async def attempt() -> Digest:
            response = await self._send("GET", url, pull_scope(repo), {"Accept": ACCEPT})
            body = await self._read(response, MAX_MANIFEST)
            if response.code == 404:
                raise BlobNotFound(repo, f"{repo}:{tag}")
            if response.code != 200:
                raise HTTPStatusError("GET", url, response.code, body)
            header = response.headers.getRawHeaders(b"docker-content-digest")
            if header:
                try:
                    return Digest.parse(header[0].decode("latin-1").strip())
                except (DigestError, UnicodeDecodeError):
                    log.warn("{url}: ignoring a malformed Docker-Content-Digest {value!r}", url=url, value=header[0])
            return Digest.from_bytes(body)

        return await self._op(f"resolve {repo}:{tag}", attempt)
