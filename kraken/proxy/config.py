"""The proxy's configuration (``etc/kraken/proxy.yaml``)."""

from __future__ import annotations

from typing import TypeVar

import attrs

from kraken.cluster.services import ServiceAddress, check_service
from kraken.config import Duration, Size, positive
from kraken.net import HTTPClientConfig
from kraken.net.endpoints import check_listen
from kraken.net.tls import TLSConfig
from kraken.origin.client import MAX_STAT_BATCH, check_origins
from kraken.registry.access import AccessRules, Rule
from kraken.registry.htpasswd import read_htpasswd
from kraken.registry.references import DEFAULT_CHECK_BATCH, DEFAULT_CHECK_CONCURRENCY, DEFAULT_MAX_REFERENCES
from kraken.registry.tokens import load_public_keys


@attrs.frozen
class UploadsConfig:
    # Uploads in progress; the proxy keeps no other blob data.
    root: str = "/var/lib/kraken/proxy/uploads"
    # An upload untouched this long (no chunk appended) is deleted with its file and session: the idle TTL.
    ttl: Duration = attrs.field(default=Duration(3600.0), validator=positive)
    # Stream each upload to an origin while it arrives, so that the PUT need not send it again
    # (kraken.proxy.stage); false: the whole file goes to the blob's origin at the PUT.
    stream_to_origin: bool = True
    # Seconds a client may be held back waiting for that origin before the stream is given up.
    stream_stall: Duration = attrs.field(default=Duration(10.0), validator=positive)


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


_Number = TypeVar("_Number", bound=float)


def _not_negative(instance: object, attribute: attrs.Attribute[_Number], value: _Number) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be 0 (no limit) or more, not {value}")


@attrs.frozen
class LimitsConfig:
    """What one client may ask of the proxy. 0 is "no limit" (the default of each, as before these existed)."""

    # The largest blob a client may push: an upload over it is refused with 413 SIZE_INVALID as soon as its
    # Content-Length, running size or final size says so, and deleted.
    max_blob_size: Size = attrs.field(default=Size(0), validator=_not_negative)
    # Upload sessions open at once, in all and per client address: one more is 429 TOOMANYREQUESTS.
    max_upload_sessions: int = attrs.field(default=0, validator=_not_negative)
    max_upload_sessions_per_client: int = attrs.field(default=0, validator=_not_negative)
    # Requests per second per client address (a token bucket of request_burst requests): over it, 429.
    requests_per_second: float = attrs.field(default=0.0, validator=_not_negative)
    request_burst: int = attrs.field(default=100, validator=positive)
    # Client addresses whose buckets are kept (the least recently seen is forgotten first).
    max_clients: int = attrs.field(default=10000, validator=positive)


@attrs.frozen
class TokenAuthConfig:
    """Docker bearer tokens from an external token service (``auth.token``)."""

    # The token service's URL, sent to clients in the Bearer challenge.
    realm: str
    # This registry's name at the token service (the challenge's service=).
    service: str
    # The tokens' iss claim.
    issuer: str
    # PEM files of the token service's certificates or public keys (RSA or EC).
    certificates: str | tuple[str, ...]
    # The tokens' aud claim; the service when empty.
    audience: str = ""
    # Clock skew tolerated on exp and nbf.
    leeway: Duration = Duration(60.0)

    def __attrs_post_init__(self) -> None:
        for key in ("realm", "service", "issuer"):
            if not getattr(self, key):
                raise ValueError(f"token.{key} must not be empty")
        if not self.certificate_files:
            raise ValueError("token.certificates: name at least one PEM file")
        for path in self.certificate_files:
            try:
                load_public_keys(path)
            except ValueError as e:
                raise ValueError(f"token.certificates: {e}") from None

    @property
    def certificate_files(self) -> tuple[str, ...]:
        return (self.certificates,) if isinstance(self.certificates, str) else self.certificates


@attrs.frozen
class AccessRuleConfig:
    """One rule of ``auth.access`` (``kraken.registry.access``): the first rule naming the user (or one of
    their groups) whose pattern matches the repository decides what they may do there."""

    # A glob ("team-a/*", "*": every repository) or, starting with ^, a regular expression on the whole name.
    repositories: str
    # Some of pull, push, delete (pushing needs pull and push); [] denies (an exception before a broader rule).
    actions: tuple[str, ...]
    # htpasswd users ("*": every user) and groups of auth.groups.
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        self.rule()

    def rule(self) -> Rule:
        return Rule.make(self.users, self.groups, self.repositories, self.actions)


@attrs.frozen
class AuthConfig:
    """Who may push and pull (``auth:``): off by default (anyone who reaches the listener may)."""

    # An htpasswd file with bcrypt entries (htpasswd -B): HTTP Basic auth. Re-read when it changes.
    htpasswd: str = ""
    # The Basic challenge's realm.
    realm: str = "Kraken registry"
    # Bearer tokens instead of htpasswd (see TokenAuthConfig).
    token: TokenAuthConfig | None = None
    # Requests without credentials may pull (GET/HEAD in a repository); pushes still need them.
    anonymous_pull: bool = False
    # Who may pull and push what (htpasswd users): rules, first match wins; none (the default): every user
    # may do everything. With rules, what no rule grants is 403 DENIED.
    access: tuple[AccessRuleConfig, ...] = ()
    # Groups the rules may name: {group: [users]}.
    groups: dict[str, tuple[str, ...]] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.htpasswd and self.token is not None:
            raise ValueError("htpasswd and token: choose one way of authenticating")
        if (self.access or self.groups) and not self.htpasswd:
            raise ValueError("access and groups need htpasswd (with tokens, the token service decides)")
        for number, rule in enumerate(self.access):
            unknown = sorted(set(rule.groups) - set(self.groups))
            if unknown:
                raise ValueError(f"access.{number}.groups: no group {unknown[0]!r} in auth.groups")
        if self.anonymous_pull and not self.enabled:
            raise ValueError("anonymous_pull needs htpasswd or token (without them anyone may pull already)")
        if self.htpasswd:
            try:
                read_htpasswd(self.htpasswd)
            except ValueError as e:
                raise ValueError(f"htpasswd: {e}") from None

    @property
    def enabled(self) -> bool:
        return bool(self.htpasswd) or self.token is not None

    def rules(self) -> AccessRules | None:
        """The access rules, or None when there are none (every user may do everything)."""
        if not self.access:
            return None
        return AccessRules([r.rule() for r in self.access], self.groups)


@attrs.frozen
class PreheatConfig:
    """The preheat routes (``kraken.proxy.preheat``): ``/registry/notifications`` and ``/registry/preheat``."""

    # Blobs the origins are asked for at once, over every preheat in flight.
    concurrency: int = attrs.field(default=8, validator=positive)
    # A file holding a shared secret: "Authorization: Bearer <secret>" may then preheat (what Harbor's Kraken
    # provider sends with an OAuth credential), and without it the routes need it or, with auth:, registry
    # credentials with push access. Empty (the default): only auth: decides, as for pushes.
    token_file: str = ""

    def __attrs_post_init__(self) -> None:
        if self.token_file:
            self.token()

    def token(self) -> bytes | None:
        """The secret (the file's first line), or None when there is none."""
        if not self.token_file:
            return None
        try:
            with open(self.token_file, "rb") as f:
                secret = f.readline().strip()
        except OSError as e:
            raise ValueError(f"token_file: cannot read {self.token_file}: {e.strerror}") from None
        if len(secret) < 16:
            raise ValueError(f"token_file: {self.token_file} must hold a secret of at least 16 characters")
        return secret


@attrs.frozen
class ProxyConfig:
    listen_http: str = attrs.field(default="tcp:15000:interface=127.0.0.1", validator=check_listen)
    # Base URL of an origin, or a list of them: the origin cluster that takes blobs
    # (any member knows where each blob lives; the others are asked when one does not answer).
    origin: str | tuple[str, ...] = attrs.field(default="http://127.0.0.1:15002", validator=check_origins)
    # The build-index: a base URL, a list of them, or a map with hosts (a list) or dns (name:port),
    # scheme, refresh_interval, down_for (kraken.cluster.services).
    build_index: ServiceAddress = attrs.field(default="http://127.0.0.1:15004", validator=check_service)
    uploads: UploadsConfig = attrs.field(factory=UploadsConfig)
    registry: RegistryConfig = attrs.field(factory=RegistryConfig)
    io_threads: int = attrs.field(default=4, validator=positive)
    http_client: HTTPClientConfig = attrs.field(factory=HTTPClientConfig)
    limits: LimitsConfig = attrs.field(factory=LimitsConfig)
    # Authentication of pushes and pulls (HTTP Basic or Docker bearer tokens); off by default.
    auth: AuthConfig = attrs.field(factory=AuthConfig)
    # Preheat from registry notifications (Harbor, docker/distribution) and POST /registry/preheat.
    preheat: PreheatConfig = attrs.field(factory=PreheatConfig)
    # TLS for this daemon's listeners and clients (kraken.net.tls; absent: plain).
    tls: TLSConfig = attrs.field(factory=TLSConfig)
