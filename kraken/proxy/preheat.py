"""Preheat: the origins fetch an image's blobs from their backends before its first pull.

Two routes, served by the proxy beside the registry API (``kraken.proxy.http.beside``):

- ``POST /registry/notifications`` takes a registry notification envelope ``{"events": [...]}``, the format
  docker/distribution's ``notifications`` endpoints and Harbor's Kraken preheat provider send. Each ``push``
  event whose target has a manifest media type (any of them: Harbor always says schema2, even for OCI images)
  is queued; other actions and layer events are ignored. The answer is 200 at once; the work goes on in the
  background. A target without a digest (Harbor preheating by tag) is resolved through the build-index.
- ``POST /registry/preheat`` takes ``{"repository": ..., "tag": ...}`` or ``{"repository": ..., "digest": ...}``
  and answers 202 with what it queued, or 404 when the tag is unknown.

Preheating one image: read its manifest from the origins (they fetch it from their backend on a miss), and the
child manifests of an index, then ask the placement origins of every referenced blob for it (``stat``: an origin
that lacks a blob fetches it from its backend and answers 202 meanwhile, and the client polls until it is
there). At most ``concurrency`` blobs are asked for at once, over every preheat in flight. Nothing passes
through the proxy but the manifests.

With an ``auth:`` block, both routes need credentials with push access to every repository named (the
registry's own Basic or Bearer credentials, which is what Harbor's provider sends). With ``preheat.token_file``,
``Authorization: Bearer <that secret>`` is enough (Harbor's provider with an OAuth credential), and without
``auth:`` it is required. ``/health`` stays open.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from typing import Any, Protocol

import attrs
from klein import Klein
from twisted.internet.defer import Deferred, DeferredSemaphore, FirstError, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from kraken.core import Digest, DigestError
from kraken.registry.auth import RegistryAuth
from kraken.registry.errors import JSON_CONTENT_TYPE, ManifestInvalid, RegistryError, Unauthorized
from kraken.registry.manifests import (
    LEGACY_TYPES,
    MANIFEST_TYPES,
    ParsedManifest,
    bare_media_type,
    manifest_closure,
    parse_manifest,
)
from kraken.registry.names import is_valid_name
from kraken.registry.routing import Route

log = Logger(namespace="kraken.proxy.preheat")

#: The largest request body the preheat routes read.
MAX_BODY = 1024 * 1024
#: The largest manifest a preheat reads.
MAX_MANIFEST = 4 * 1024 * 1024
#: The target media types of the events preheated: every manifest type (schema 1 ones are queued, and
#: their preheat fails in the log: Kraken does not read them).
PREHEATED_TYPES = MANIFEST_TYPES | LEGACY_TYPES
#: How deep an index may nest indexes.
MAX_DEPTH = 4


class NotificationInvalid(RegistryError):
    """A notification or preheat request that cannot be understood (400)."""

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(400, "NOTIFICATION_INVALID", message, detail)


class TagUnknown(RegistryError):
    def __init__(self, repository: str, tag: str) -> None:
        super().__init__(404, "MANIFEST_UNKNOWN", "no such tag", {"repository": repository, "tag": tag})


class Origins(Protocol):
    """What a preheat asks of the origin cluster (``kraken.origin.client.ClusterClient``)."""

    async def stat(self, namespace: str, digest: Digest) -> int | None: ...

    async def read_small(self, namespace: str, digest: Digest, limit: int) -> bytes | None: ...


class Tags(Protocol):
    """What a preheat asks of the build-index (``kraken.buildindex.client.BuildIndexes``)."""

    async def get_tag(self, repo: str, tag: str) -> Digest | None: ...


@attrs.frozen
class Target:
    """One image to preheat: a repository and its manifest's digest, or a tag to resolve."""

    repository: str
    digest: Digest | None = None
    tag: str | None = None

    def describe(self) -> dict[str, str]:
        found = {"repository": self.repository}
        if self.digest is not None:
            found["digest"] = str(self.digest)
        if self.tag:
            found["tag"] = self.tag
        return found


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise NotificationInvalid(f"the {what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise NotificationInvalid(f"the {what} must be a JSON object")
    return doc


def _target(fields: dict[str, Any], where: str) -> Target:
    """A ``Target`` from ``repository`` and ``digest`` (may be empty) or ``tag``; 400 naming ``where``."""
    repository, digest, tag = fields.get("repository"), fields.get("digest") or None, fields.get("tag") or None
    if not isinstance(repository, str) or not is_valid_name(repository):
        raise NotificationInvalid(f"{where}: repository is not a valid repository name", {"repository": repository})
    if tag is not None and not isinstance(tag, str):
        raise NotificationInvalid(f"{where}: tag must be a string")
    try:
        parsed = None if digest is None else Digest.parse(digest)
    except (DigestError, TypeError, AttributeError):
        raise NotificationInvalid(f"{where}: digest is not a valid digest", {"digest": digest}) from None
    if parsed is None and tag is None:
        raise NotificationInvalid(f"{where}: a digest or a tag is needed")
    return Target(repository, parsed, tag)


def parse_envelope(body: bytes) -> tuple[list[Target], int]:
    """The images a notification envelope asks to preheat, and how many events it ignores (pulls, layers...).
    Raises ``NotificationInvalid`` for what is not an envelope."""
    doc = _json_object(body, "notification envelope")
    events = doc.get("events")
    if not isinstance(events, list):
        raise NotificationInvalid('the notification envelope has no "events" list')
    targets: list[Target] = []
    for i, event in enumerate(events):
        target = event.get("target") if isinstance(event, dict) else None
        if not isinstance(target, dict):
            raise NotificationInvalid(f"event {i} has no target object")
        if event.get("action") != "push" or bare_media_type(target.get("mediaType")) not in PREHEATED_TYPES:
            continue
        found = _target(target, f"event {i}")
        if found not in targets:
            targets.append(found)
    return targets, len(events) - len(targets)


def parse_preheat(body: bytes) -> Target:
    """The image a ``POST /registry/preheat`` body names."""
    doc = _json_object(body, "preheat request")
    if doc.get("digest") and doc.get("tag"):
        raise NotificationInvalid("give a digest or a tag, not both")
    return _target(doc, "preheat request")


def _parse(body: bytes, hint: str | None) -> ParsedManifest:
    """The manifest ``body``; an OCI document without ``mediaType`` is told apart by its structure."""
    try:
        return parse_manifest(body, None)
    except ManifestInvalid:
        if hint is None:
            raise
        return parse_manifest(body, hint)


class Preheater:
    """Makes the origins hold every blob of an image (see the module). ``concurrency`` bounds the blobs
    asked for at once over every preheat; ``running`` holds the preheats in flight."""

    def __init__(self, origins: Origins, tags: Tags, *, concurrency: int = 8) -> None:
        self._origins = origins
        self._tags = tags
        self._slots = DeferredSemaphore(concurrency)
        self.running: set[Deferred[Any]] = set()
        self.done = 0
        self.failed = 0

    async def resolve(self, target: Target) -> Digest | None:
        if target.digest is not None:
            return target.digest
        assert target.tag is not None
        return await self._tags.get_tag(target.repository, target.tag)

    async def closure(self, repo: str, digest: Digest) -> tuple[list[Digest], list[Digest]]:
        """The manifests (``digest`` first, then the children of an index) and the blobs they reference."""

        async def read(d: Digest, media_type: str | None) -> ParsedManifest:
            body = await self._origins.read_small(repo, d, MAX_MANIFEST)
            if body is None:
                raise LookupError(f"manifest {d} is not on the origins nor in their backend")
            return _parse(body, media_type)

        return await manifest_closure(read, digest, max_depth=MAX_DEPTH)

    async def warm(self, target: Target) -> int:
        """Preheat ``target``: the number of blobs the origins now hold."""
        digest = await self.resolve(target)
        if digest is None:
            raise LookupError(f"tag {target.tag} of {target.repository} is unknown")
        manifests, blobs = await self.closure(target.repository, digest)

        async def present(blob: Digest) -> None:
            size = await self._slots.run(lambda: Deferred.fromCoroutine(self._origins.stat(target.repository, blob)))
            if size is None:
                raise LookupError(f"blob {blob} is not on the origins nor in their backend")

        try:
            await gatherResults([Deferred.fromCoroutine(present(b)) for b in blobs], consumeErrors=True)
        except FirstError as e:
            e.subFailure.raiseException()
        log.info(
            "preheat of {repository}@{digest} done: {blobs} blobs and {manifests} manifests present on the origins",
            repository=target.repository,
            digest=str(digest),
            blobs=len(blobs),
            manifests=len(manifests),
        )
        return len(blobs)

    def start(self, target: Target) -> Deferred[Any]:
        """Preheat ``target`` in the background; failures are logged, never raised."""
        d = Deferred.fromCoroutine(self.warm(target))
        self.running.add(d)

        def finished(result: Any) -> None:
            self.running.discard(d)
            if isinstance(result, Failure):
                self.failed += 1
                log.warn(
                    "preheat of {target} failed: {error}",
                    target=target.describe(),
                    error=str(result.value) or repr(result.value),
                )
            else:
                self.done += 1

        d.addBoth(finished)
        return d


class PreheatAPI:
    """The two routes (see the module), over a ``Preheater``; ``auth`` as the registry API's."""

    app = Klein()

    def __init__(self, preheater: Preheater, *, auth: RegistryAuth | None = None, token: bytes | None = None) -> None:
        self.preheater = preheater
        self._auth = auth
        self._token = token

    def resource(self) -> IResource:
        return self.app.resource()

    @app.handle_errors(RegistryError)
    def _error(self, request: IRequest, failure: Failure) -> bytes:
        err = failure.value
        assert isinstance(err, RegistryError)
        request.setResponseCode(err.status)
        for k, v in err.headers.items():
            request.setHeader(k.encode("latin-1"), v.encode("latin-1"))
        request.setHeader(b"content-type", JSON_CONTENT_TYPE)
        if err.status == 400:
            log.info("refused {path}: {message}", path=request.path.decode("latin-1"), message=err.message)
        return err.body()

    async def _check(self, request: IRequest, targets: Iterable[Target]) -> None:
        """Return when the caller may preheat ``targets``: the shared secret, or registry credentials with push
        access to each; else raise 401."""
        if self._token is not None:
            sent = request.getHeader(b"authorization") or b""
            if hmac.compare_digest(sent.encode("latin-1") if isinstance(sent, str) else sent, b"Bearer " + self._token):
                return
            if self._auth is None:
                log.info("refused {path}: no preheat token", path=request.path.decode("latin-1"))
                raise Unauthorized(
                    "the preheat token is required", headers={"WWW-Authenticate": 'Bearer realm="kraken preheat"'}
                )
        if self._auth is None:
            return
        for target in targets:
            await self._auth.check(request, Route("manifest", target.repository, "preheat"))

    @app.route("/registry/notifications", methods=["POST"])
    async def notifications(self, request: IRequest) -> bytes:
        targets, ignored = parse_envelope(_body(request))
        await self._check(request, targets)
        for target in targets:
            self.preheater.start(target)
        if targets:
            log.info(
                "notification: preheating {targets} ({ignored} events ignored)",
                targets=[t.describe() for t in targets],
                ignored=ignored,
            )
        return _answer(request, 200, {"queued": [t.describe() for t in targets], "ignored": ignored})

    @app.route("/registry/preheat", methods=["POST"])
    async def preheat(self, request: IRequest) -> bytes:
        target = parse_preheat(_body(request))
        await self._check(request, [target])
        digest = await self.preheater.resolve(target)
        if digest is None:
            assert target.tag is not None
            raise TagUnknown(target.repository, target.tag)
        target = attrs.evolve(target, digest=digest)
        self.preheater.start(target)
        log.info("preheat of {target} queued", target=target.describe())
        return _answer(request, 202, {"queued": [target.describe()]})


def _body(request: IRequest) -> bytes:
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    body = content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise NotificationInvalid(f"the request body is larger than {MAX_BODY} bytes")
    return body


def _answer(request: IRequest, status: int, doc: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")
