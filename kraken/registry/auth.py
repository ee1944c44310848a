"""Who may do what on the registry API: HTTP Basic (htpasswd) or Docker bearer tokens.

``RegistryAPI`` calls ``RegistryAuth.check(request, route)`` for every
``/v2`` request that names an endpoint, before the handler runs. What each
route needs, as distribution asks it (``registry/handlers/app.go``):

- ``/v2/``: any valid credentials, no scope;
- ``/v2/_catalog``: ``registry:catalog:*``;
- GET/HEAD in a repository: ``repository:<name>:pull``;
- POST/PUT/PATCH (uploads, manifest PUT) and upload DELETE:
  ``repository:<name>:pull,push``; a manifest or blob DELETE: ``delete``;
- a cross-repository mount (``POST ...?mount=<digest>&from=<source>``) also
  wants ``pull`` on ``<source>``: without it (or without ``from``) the mount
  is dropped from the request, which becomes a normal upload (202), so a
  blob is never mounted from a repository the caller may not read.

Answers: credentials missing, wrong (Basic) or a token that is invalid
(signature, issuer, audience, expiry): 401 ``UNAUTHORIZED`` with the
challenge (``WWW-Authenticate: Basic realm=...`` or ``Bearer realm=...,
service=...,scope=...[,error="invalid_token"]``). A valid token that lacks a
needed scope: 401 ``UNAUTHORIZED`` with ``error="insufficient_scope"`` and the
needed scope, not 403: that is what distribution answers and what clients
act on (docker, containerd and containers/image ask the token service again
for the challenged scope; a 403 ends the pull or push). The body lists the
needed accesses: ``{"errors":[{"code":"UNAUTHORIZED","message":...,
"detail":[{"Type":"repository","Name":...,"Action":"pull"}]}]}``.
``anonymous_pull`` lets requests without credentials pull (not ``/v2/``
itself, which still challenges so that clients learn how to log in, nor the
catalog).

Basic users may be limited by access rules (``kraken.registry.access``):
without rules an authenticated user may do everything; with them, what no
rule grants is 403 ``DENIED`` (the credentials are right, the answer will not
change by asking again), with the refused accesses in ``detail``; a mount
from a repository the user may not pull becomes a plain upload, as above.

``RegistryAuth.reload`` (on SIGHUP, through ``kraken.net.tls.ReloadOnSIGHUP``)
reads the htpasswd file or the token service's keys again; when that fails it
keeps what it had and logs why, naming the file.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from kraken.registry.access import AccessRules, UserGrants
from kraken.registry.errors import Denied, Unauthorized
from kraken.registry.htpasswd import HtpasswdFile
from kraken.registry.messages import arg, registry_logger, text
from kraken.registry.names import check_name, is_valid_name
from kraken.registry.routing import Route
from kraken.registry.tokens import Grants, InvalidToken, TokenKeys, TokenVerifier
from kraken.workers import Worker


@attrs.frozen
class Access:
    """One action on one resource (distribution's ``auth.Access``)."""

    type: str
    name: str
    action: str

    def detail(self) -> dict[str, str]:
        return {"Type": self.type, "Name": self.name, "Action": self.action}


def required_access(route: Route, method: bytes, name: str) -> tuple[Access, ...]:
    """What ``method`` on ``route`` (in repository ``name``, already checked) needs."""
    if route.kind == "base":
        return ()
    if route.kind == "catalog":
        return (Access("registry", "catalog", "*"),)
    if method in (b"GET", b"HEAD"):
        return (Access("repository", name, "pull"),)
    if method == b"DELETE" and route.kind != "upload":
        return (Access("repository", name, "delete"),)
    return (Access("repository", name, "pull"), Access("repository", name, "push"))


def scope_param(accesses: Sequence[Access]) -> str:
    """``repository:a:pull,push repository:b:pull``: the accesses grouped by resource, in order."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for a in accesses:
        actions = grouped.setdefault((a.type, a.name), [])
        if a.action not in actions:
            actions.append(a.action)
    return " ".join(f"{t}:{n}:{','.join(actions)}" for (t, n), actions in grouped.items())


class Granted(Protocol):
    def allows(self, type: str, name: str, action: str) -> bool: ...


class _Everything:
    """What an authenticated htpasswd user may do: everything (as in distribution)."""

    def allows(self, type: str, name: str, action: str) -> bool:
        return True


class Refused(Exception):
    """Credentials were given and are wrong: ``error`` is the challenge's error (or None), ``why`` the message."""

    def __init__(self, why: str, error: str | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.error = error


class Credentials(Protocol):
    """One way of authenticating (Basic or Bearer)."""

    async def grants(self, request: IRequest) -> Granted | None:
        """What the request's credentials allow; None when it carries none of
        this kind; ``Refused`` when they are wrong."""

    def challenge(self, needed: Sequence[Access], error: str | None) -> str:
        """The ``WWW-Authenticate`` value asking for ``needed``."""

    def reload(self) -> bool:
        """Read the credentials' files again (False, logged, when that failed: the previous ones stay)."""


def _authorization(request: IRequest, scheme: bytes) -> bytes | None:
    """The credentials after ``scheme`` in the Authorization header, or None."""
    value = request.getHeader(b"authorization")
    if value is None:
        return None
    given, _, rest = value.strip().partition(b" ")
    return rest.strip() if given.lower() == scheme else None


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class BasicCredentials:
    """HTTP Basic against an htpasswd file (bcrypt checks in ``worker``), limited by ``rules`` when given."""

    def __init__(self, users: HtpasswdFile, realm: str, worker: Worker, rules: AccessRules | None = None) -> None:
        self._users = users
        self._realm = realm
        self._worker = worker
        self._rules = rules

    async def grants(self, request: IRequest) -> Granted | None:
        raw = _authorization(request, b"basic")
        if raw is None:
            return None
        try:
            user, sep, password = base64.b64decode(raw, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise Refused("malformed Basic credentials") from None
        if not sep or not await self._worker.run(self._users.check, user, password):
            raise Refused(f"invalid username or password (user {user!r})")
        return _Everything() if self._rules is None else self._rules.grants(user)

    def challenge(self, needed: Sequence[Access], error: str | None) -> str:
        return f"Basic realm={_quoted(self._realm)}"

    def reload(self) -> bool:
        return self._users.reload()


class BearerCredentials:
    """Docker bearer tokens (JWT) from the token service at ``realm``."""

    def __init__(
        self,
        verifier: TokenVerifier,
        *,
        realm: str,
        service: str,
        clock: IReactorTime,
        keys: TokenKeys | None = None,
    ) -> None:
        self._verifier = verifier
        self._realm = realm
        self._service = service
        self._clock = clock
        self._keys = keys

    async def grants(self, request: IRequest) -> Granted | None:
        raw = _authorization(request, b"bearer")
        if raw is None:
            return None
        try:
            grants: Grants = self._verifier.verify(raw.decode("ascii", "replace"), self._clock.seconds())
        except InvalidToken as e:
            raise Refused(f"invalid token: {e}", "invalid_token") from None
        return grants

    def challenge(self, needed: Sequence[Access], error: str | None) -> str:
        parts = [f"Bearer realm={_quoted(self._realm)}", f"service={_quoted(self._service)}"]
        if needed:
            parts.append(f"scope={_quoted(scope_param(needed))}")
        if error is not None:
            parts.append(f"error={_quoted(error)}")
        return ",".join(parts)

    def reload(self) -> bool:
        """Read the verification keys again (``keys``: their files); new requests use them."""
        if self._keys is None or not self._keys.reload():
            return False
        self._verifier = attrs.evolve(self._verifier, keys=self._keys.keys)
        return True


class RegistryAuth:
    """The gate in front of every registry route (see the module docstring)."""

    def __init__(self, credentials: Credentials, *, anonymous_pull: bool = False) -> None:
        self._credentials = credentials
        self._anonymous_pull = anonymous_pull
        self.log = registry_logger(self)

    async def check(self, request: IRequest, route: Route) -> None:
        """Return when ``request`` may go on to ``route``'s handler; else raise 401 UNAUTHORIZED."""
        name = check_name(route.name) if route.has_name else ""
        needed = required_access(route, request.method, name)
        mount_from = self._mount_source(request, route)
        try:
            granted = await self._credentials.grants(request)
        except Refused as e:
            self._log_refusal(request, e.why)
            raise self._unauthorized(needed, e.error, e.why) from None
        if granted is None:
            if self._anonymous_pull and needed and all(a.action == "pull" for a in needed):
                return
            raise self._unauthorized((*needed, *mount_from), None, "authentication required")
        missing = [a for a in needed if not granted.allows(a.type, a.name, a.action)]
        if missing and isinstance(granted, UserGrants):
            self._log_refusal(request, f"user {granted.user!r} has no {scope_param(missing)} access (access rules)")
            raise Denied(detail=[a.detail() for a in missing])
        if missing:
            self._log_refusal(request, f"no {scope_param(missing)} access")
            raise self._unauthorized((*needed, *mount_from), "insufficient_scope", "insufficient scope")
        if route.kind == "upload_start" and arg(request, b"mount") is not None:
            self._check_mount(request, granted, mount_from, name)

    def reload(self) -> bool:
        """Read the htpasswd file or the token keys again (see the module); what ``ReloadOnSIGHUP`` calls."""
        return self._credentials.reload()

    def _mount_source(self, request: IRequest, route: Route) -> tuple[Access, ...]:
        source = arg(request, b"from")
        if route.kind != "upload_start" or arg(request, b"mount") is None or source is None:
            return ()
        return (Access("repository", source, "pull"),) if is_valid_name(source) else ()

    def _check_mount(self, request: IRequest, granted: Granted, source: tuple[Access, ...], name: str) -> None:
        """Drop a mount the caller may not make (no readable ``from``): the request becomes a plain upload."""
        if source and all(granted.allows(a.type, a.name, a.action) for a in source):
            return
        self.log.info(
            "mount into {repo} not allowed (no pull access to {source!r}): starting a plain upload",
            repo=name,
            source=arg(request, b"from"),
        )
        request.args.pop(b"mount", None)
        request.args.pop(b"from", None)

    def _unauthorized(self, needed: Sequence[Access], error: str | None, message: str) -> Unauthorized:
        detail: Any = [a.detail() for a in needed] or None
        return Unauthorized(
            message, detail=detail, headers={"WWW-Authenticate": self._credentials.challenge(needed, error)}
        )

    def _log_refusal(self, request: IRequest, why: str) -> None:
        self.log.info("refused {method} {path}: {why}", method=text(request.method), path=text(request.path), why=why)
