"""The Docker Registry HTTP API v2 / OCI distribution API, as a Klein app.

Repository names contain slashes and may end in words the API itself uses
(``a/blobs/b``), so the app has one catch-all route and ``match_route``
dispatches on the path's *suffix*, the way distribution's anchored regular
expressions do: ``<name>/tags/list``, ``<name>/manifests/<ref>``,
``<name>/blobs/uploads/[<uid>]``, ``<name>/blobs/<digest>``,
``<name>/referrers/<digest>``. Matching on the raw request path also makes
the resource work whether it is the site root or a child of another one.

Every protocol failure is a ``RegistryError`` rendered by the single
``handle_errors`` handler as OCI error JSON; a full disk (ENOSPC, EDQUOT) is
507 ``InsufficientStorage``; anything else unexpected is logged and answered
as 500 UNKNOWN; ``CancelledError`` (client gone) propagates. An upload whose
data met a full disk is deleted with its session (the client starts again);
an upload body the spool could not write is answered by ``body_refused``
(``make_site(body_refused=...)``) before the handler runs.

Upload bodies are never read on the reactor thread: twisted.web has spooled
them to ``request.content`` and ``UploadArea.append`` copies and hashes them
in its worker. Only manifests (capped by ``max_manifest_size``) are read and
parsed here; how many references one may have and how they are looked up is
``kraken.registry.references``.
"""

from __future__ import annotations

import json
import re
from typing import IO, Any
from urllib.parse import quote, unquote

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from kraken.core import Digest
from kraken.files import errno_name, is_out_of_space
from kraken.net.server import Refusal
from kraken.registry.backend import IRegistryBackend
from kraken.registry.errors import (
    JSON_CONTENT_TYPE,
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    InsufficientStorage,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    RangeInvalid,
    RegistryError,
    SizeInvalid,
    Unknown,
    Unsupported,
)
from kraken.registry.manifests import OCI_INDEX, bare_media_type, negotiate, parse_manifest
from kraken.registry.names import (
    check_name,
    check_tag,
    is_valid_name,
    parse_digest,
    parse_pagination,
    parse_reference,
)
from kraken.registry.references import ReferencePolicy
from kraken.store.uploads import RangeMismatch, UploadArea, UploadTruncated, UploadUnknown

API_VERSION = b"registry/2.0"
DEFAULT_MAX_MANIFEST_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_PAGE_SIZE = 1000
DEFAULT_READ_ONLY_MESSAGE = "this registry is read-only: push to the Kraken proxy"

_WRITE_METHODS = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
_READ_METHODS = (b"GET", b"HEAD")
# Inclusive ``<start>-<end>`` without a unit (OCI); ``bytes=``/``bytes `` and a
# trailing ``/<total>`` are tolerated.
_CONTENT_RANGE = re.compile(rb"\s*(?:bytes[= ])?([0-9]{1,18})-([0-9]{1,18})(?:/(?:[0-9]+|\*))?\s*")


@attrs.frozen
class Route:
    """What a request path names. ``kind`` is one of ``base``, ``catalog``,
    ``tags``, ``manifest``, ``blob``, ``upload_start``, ``upload``,
    ``referrers``; ``name`` is the (unvalidated) repository, ``arg`` the
    reference, digest or upload id."""

    kind: str
    name: str = ""
    arg: str = ""


def match_route(path: bytes) -> Route | None:
    """The route a raw (percent-encoded) request path names, or None."""
    if not path.startswith(b"/v2"):
        return None
    rest = path[3:]
    if rest in (b"", b"/"):
        return Route("base")
    if not rest.startswith(b"/"):
        return None
    segs = [unquote(s, errors="replace") for s in rest[1:].decode("latin-1").split("/")]
    n = len(segs)

    def name(k: int) -> str:
        # A percent-encoded slash inside a segment must not build a valid
        # name: keep it encoded, so name validation refuses it.
        return "/".join(p.replace("/", "%2F") for p in segs[: n - k])

    if segs == ["_catalog"]:
        return Route("catalog")
    if n >= 3 and segs[-2:] == ["tags", "list"]:
        return Route("tags", name(2))
    if n >= 3 and segs[-2] == "manifests":
        return Route("manifest", name(2), segs[-1])
    if n >= 4 and segs[-3:-1] == ["blobs", "uploads"]:
        if segs[-1] == "":
            return Route("upload_start", name(3))
        return Route("upload", name(3), segs[-1])
    if n >= 3 and segs[-2:] == ["blobs", "uploads"]:
        return Route("upload_start", name(2))
    if n >= 3 and segs[-2] == "blobs":
        return Route("blob", name(2), segs[-1])
    if n >= 3 and segs[-2] == "referrers":
        return Route("referrers", name(2), segs[-1])
    return None


_ALLOWED: dict[str, tuple[bytes, ...]] = {
    "base": _READ_METHODS,
    "catalog": _READ_METHODS,
    "tags": _READ_METHODS,
    "referrers": _READ_METHODS,
    "manifest": (*_READ_METHODS, b"PUT", b"DELETE"),
    "blob": (*_READ_METHODS, b"DELETE"),
    "upload_start": (b"POST",),
    "upload": (*_READ_METHODS, b"PATCH", b"PUT", b"DELETE"),
}


@attrs.define
class _Session:
    repo: str
    started: float
    finishing: bool = False


class RegistryAPI:
    """The registry API over an ``IRegistryBackend``.

    ``uploads`` holds blob uploads in progress; it may be None only when
    ``read_only`` (the agent), where every write answers 405 UNSUPPORTED
    with ``read_only_message``.
    """

    app = Klein()
    log = Logger()

    def __init__(
        self,
        backend: IRegistryBackend,
        uploads: UploadArea | None,
        *,
        clock: IReactorTime,
        read_only: bool = False,
        max_manifest_size: int = DEFAULT_MAX_MANIFEST_SIZE,
        read_only_message: str = DEFAULT_READ_ONLY_MESSAGE,
        max_page_size: int = DEFAULT_MAX_PAGE_SIZE,
        references: ReferencePolicy | None = None,
    ) -> None:
        if uploads is None and not read_only:
            raise ValueError("a writable registry needs an UploadArea")
        if max_page_size < 1:
            raise ValueError("max_page_size must be at least 1")
        self._backend = backend
        self._uploads = uploads
        self._clock = clock
        self._read_only = read_only
        self._max_manifest_size = max_manifest_size
        self._read_only_message = read_only_message
        self._max_page_size = max_page_size
        self._references = references or ReferencePolicy()
        self._sessions: dict[str, _Session] = {}

    def resource(self) -> IResource:
        """The Klein resource serving the whole API (paths start with ``/v2``)."""
        return self.app.resource()

    def expire_uploads(self, now: float, max_age: float) -> Deferred[list[str]]:
        """Delete uploads untouched for ``max_age`` seconds and forget their
        repositories; for a ``TimerService``. Never fails: errors are logged."""
        return Deferred.fromCoroutine(self._expire_uploads(now, max_age))

    async def _expire_uploads(self, now: float, max_age: float) -> list[str]:
        if self._uploads is None:
            return []
        try:
            stale = await self._uploads.expire(now, max_age)
        except CancelledError:
            raise
        except Exception:
            self.log.failure("expiring uploads failed")
            return []
        gone = []
        for uid in stale:
            try:
                # expire() skips (but still lists) uploads busy appending.
                self._uploads.size(uid)
            except UploadUnknown:
                self._sessions.pop(uid, None)
                gone.append(uid)
        return gone

    # -- plumbing -------------------------------------------------------

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
            method=_text(request.method),
            path=_text(request.path),
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
        request.setHeader(b"docker-distribution-api-version", API_VERSION)
        try:
            return await self._dispatch(request)
        except (RegistryError, CancelledError):
            raise
        except Exception as e:
            if is_out_of_space(e):
                raise _no_space(e) from None
            self.log.failure(
                "unhandled error serving {method} {path}", method=_text(request.method), path=_text(request.path)
            )
            raise Unknown() from None

    async def _dispatch(self, request: IRequest) -> Any:
        method = request.method
        if self._read_only and method in _WRITE_METHODS:
            raise Unsupported(self._read_only_message)
        route = match_route(request.path)
        if route is None:
            raise Unsupported("no such API endpoint", status=404, detail={"path": _text(request.path)})
        allowed = _ALLOWED[route.kind]
        if method not in allowed:
            raise Unsupported(
                f"{_text(method)} is not supported here", headers={"Allow": ", ".join(m.decode() for m in allowed)}
            )
        if route.kind == "base":
            return _json(request, {})
        if route.kind == "catalog":
            return await self._catalog(request)
        name = check_name(route.name)
        if route.kind == "tags":
            return await self._tags(request, name)
        if route.kind == "manifest":
            if method == b"PUT":
                return await self._put_manifest(request, name, route.arg)
            if method == b"DELETE":
                raise Unsupported("manifest deletion is not supported")
            return await self._get_manifest(request, name, route.arg)
        if route.kind == "blob":
            if method == b"DELETE":
                raise Unsupported("blob deletion is not supported")
            return await self._get_blob(request, name, route.arg)
        if route.kind == "referrers":
            return await self._referrers(request, name, route.arg)
        if route.kind == "upload_start":
            return await self._start_upload(request, name)
        # route.kind == "upload"
        if method == b"PATCH":
            return await self._patch_upload(request, name, route.arg)
        if method == b"PUT":
            return await self._finish_upload(request, name, route.arg)
        if method == b"DELETE":
            return await self._cancel_upload(request, name, route.arg)
        return await self._upload_status(request, name, route.arg)

    def body_refused(self, method: bytes, path: bytes, failure: Failure) -> Deferred[Refusal]:
        """How the site answers an upload body it could not store
        (``kraken.net.server.BodyRefused``): OCI JSON (507 when the disk is
        full, else 500 UNKNOWN), once an upload it was for is deleted with its
        session (the handler, which would have, never runs)."""
        return Deferred.fromCoroutine(self._refuse_body(path, failure))

    async def _refuse_body(self, path: bytes, failure: Failure) -> Refusal:
        route = match_route(path.split(b"?", 1)[0])
        if route is not None and route.kind == "upload" and self._uploads is not None:
            uid = route.arg
            session = self._sessions.get(uid)
            if session is not None and session.repo == route.name:
                self._sessions.pop(uid, None)
                try:
                    await self._uploads.delete(uid)
                except Exception:
                    self.log.failure("deleting upload {uid} failed", uid=uid)
        e = failure.value
        error = _no_space(e) if e is not None and is_out_of_space(e) else Unknown("could not store the request body")
        body = error.body()
        return Refusal(
            error.status,
            [(b"Content-Type", JSON_CONTENT_TYPE), (b"Docker-Distribution-Api-Version", API_VERSION)],
            body,
        )

    def not_utf8(self) -> Refusal:
        """The answer to a request whose path is not UTF-8 once percent-decoded (``make_site(not_utf8=...)``):
        no repository name, tag or digest can be spelled that way."""
        error = NameInvalid("the request path is not UTF-8 once percent-decoded")
        return Refusal(
            error.status,
            [(b"Content-Type", JSON_CONTENT_TYPE), (b"Docker-Distribution-Api-Version", API_VERSION)],
            error.body(),
        )

    # -- blobs ------------------------------------------------------------

    async def _get_blob(self, request: IRequest, name: str, digest_text: str) -> Any:
        digest = parse_digest(digest_text)
        resource = await self._backend.blob_resource(name, digest)
        if resource is None:
            raise BlobUnknown(detail={"digest": str(digest)})
        raw_range = request.getHeader(b"range")
        if raw_range is not None and _backwards_range(raw_range):
            # static.File ignores such a range and sends everything; the OCI
            # conformance suite (ranges "500-0") expects 416.
            size = await self._backend.stat_blob(name, digest)
            raise RangeInvalid(
                f"unsatisfiable Range {_text(raw_range)!r}",
                status=416,
                headers={"Content-Range": f"bytes */{size if size is not None else '*'}"},
            )
        request.setHeader(b"docker-content-digest", str(digest).encode())
        # Klein renders the returned resource after walking request.postpath;
        # it must render as itself, not look up children.
        request.prepath.extend(request.postpath)
        request.postpath = []
        return resource

    # -- uploads ----------------------------------------------------------

    def _area(self) -> UploadArea:
        if self._uploads is None:  # read-only: writes were refused earlier
            raise Unsupported(self._read_only_message)
        return self._uploads

    def _session(self, name: str, uid: str) -> _Session:
        session = self._sessions.get(uid)
        if session is None or session.repo != name or self._uploads is None:
            raise BlobUploadUnknown(detail={"uuid": uid})
        return session

    def _size(self, uid: str) -> int:
        try:
            return self._area().size(uid)
        except UploadUnknown:
            self._sessions.pop(uid, None)
            raise BlobUploadUnknown(detail={"uuid": uid}) from None

    async def _start_upload(self, request: IRequest, name: str) -> bytes:
        uploads = self._area()
        mount = _arg(request, b"mount")
        if mount is not None:
            mounted = await self._try_mount(name, mount, _arg(request, b"from"))
            if mounted is not None:
                return _created_blob(request, name, mounted)
        digest_arg = _arg(request, b"digest")
        if digest_arg is not None:
            return await self._monolithic(request, name, parse_digest(digest_arg))
        uid = await uploads.create()
        self._sessions[uid] = _Session(name, self._clock.seconds())
        self.log.info("upload {uid} started for {repo}", uid=uid, repo=name)
        request.setResponseCode(202)
        _upload_headers(request, name, uid, 0)
        return b""

    async def _try_mount(self, name: str, mount: str, source: str | None) -> Digest | None:
        """Blobs are global and content-addressed here, so a mount succeeds
        whenever the blob is stored (``from`` is optional and only logged). A
        malformed digest or source falls back to a new upload, like
        distribution."""
        try:
            digest = Digest.parse(mount)
        except ValueError:
            return None
        if source is not None and not is_valid_name(source):
            return None
        if await self._backend.stat_blob(name, digest) is None:
            return None
        self.log.info("blob {digest} mounted into {repo} from {source}", digest=str(digest), repo=name, source=source)
        return digest

    async def _monolithic(self, request: IRequest, name: str, expected: Digest) -> bytes:
        uploads = self._area()
        uid = await uploads.create()
        session = self._sessions[uid] = _Session(name, self._clock.seconds(), finishing=True)
        try:
            await self._append_body(request, name, uid, allow_range=False)
            await self._complete(name, uid, session, expected)
        except BaseException:
            if uid in self._sessions:
                self._sessions.pop(uid, None)
                await uploads.delete(uid)
            raise
        return _created_blob(request, name, expected)

    async def _patch_upload(self, request: IRequest, name: str, uid: str) -> bytes:
        session = self._session(name, uid)
        if session.finishing:
            raise BlobUploadInvalid("the upload is being completed", detail={"uuid": uid})
        content_type = request.getHeader(b"content-type")
        if content_type is not None and bare_media_type(content_type) not in ("", "application/octet-stream"):
            raise BlobUploadInvalid(
                "chunks must be sent as application/octet-stream", detail={"content_type": _text(content_type)}
            )
        size = await self._append_body(request, name, uid, allow_range=True)
        request.setResponseCode(202)
        _upload_headers(request, name, uid, size)
        return b""

    async def _upload_status(self, request: IRequest, name: str, uid: str) -> bytes:
        self._session(name, uid)
        size = self._size(uid)
        request.setResponseCode(204)
        _upload_headers(request, name, uid, size)
        return b""

    async def _cancel_upload(self, request: IRequest, name: str, uid: str) -> bytes:
        session = self._session(name, uid)
        if session.finishing:
            raise BlobUploadInvalid("the upload is being completed", detail={"uuid": uid})
        self._sessions.pop(uid, None)
        await self._area().delete(uid)
        self.log.info("upload {uid} cancelled for {repo}", uid=uid, repo=name)
        request.setResponseCode(204)
        request.setHeader(b"content-length", b"0")
        return b""

    async def _finish_upload(self, request: IRequest, name: str, uid: str) -> bytes:
        session = self._session(name, uid)
        if session.finishing:
            raise BlobUploadInvalid("the upload is being completed", detail={"uuid": uid})
        values = request.args.get(b"digest") or []
        if not values:
            raise DigestInvalid("the digest parameter is required to complete an upload")
        digests = {parse_digest(v.decode("utf-8", "replace")) for v in values}
        if len(digests) != 1:
            raise DigestInvalid("digest parameters disagree", detail={"digests": sorted(map(str, digests))})
        (expected,) = digests
        session.finishing = True
        try:
            if request.getHeader(b"content-range") is not None or _body_length(request.content) > 0:
                await self._append_body(request, name, uid, allow_range=True)
            await self._complete(name, uid, session, expected)
        finally:
            session.finishing = False
        return _created_blob(request, name, expected)

    async def _append_body(self, request: IRequest, name: str, uid: str, *, allow_range: bool) -> int:
        """Append the request body to upload ``uid``; return the new size.

        With ``Content-Range: <start>-<end>`` the chunk must start at the
        current size (else 416 with the current ``Range``) and hold exactly
        ``end - start + 1`` bytes; without it the body is a streamed append.
        """
        uploads = self._area()
        content = request.content
        declared = _content_length(request)
        size = self._size(uid)
        raw_range = request.getHeader(b"content-range") if allow_range else None
        offset: int | None = None
        length = declared
        if raw_range is not None:
            m = _CONTENT_RANGE.fullmatch(raw_range)
            state = _upload_state_headers(name, uid, size)
            if m is None or int(m.group(2)) < int(m.group(1)):
                raise RangeInvalid(
                    f"malformed Content-Range {_text(raw_range)!r}: expected <start>-<end>", headers=state
                )
            offset, end = int(m.group(1)), int(m.group(2))
            length = end - offset + 1
            if offset != size:
                raise RangeInvalid(
                    f"chunk starts at {offset} but the upload holds {size} bytes",
                    detail={"expected": size, "got": offset},
                    headers=state,
                )
            if declared is not None and declared != length:
                raise SizeInvalid(
                    f"Content-Length {declared} does not match Content-Range {offset}-{end}",
                    detail={"content_length": declared, "range_length": length},
                )
            if declared is None and _body_length(content) > length:
                raise SizeInvalid(f"the body is longer than Content-Range {offset}-{end}")
        if content is None or (length == 0 and offset is None):
            return size
        try:
            new_size = await uploads.append(uid, content, offset, length)
        except RangeMismatch as e:
            raise RangeInvalid(
                str(e),
                detail={"expected": e.expected, "got": e.got},
                headers=_upload_state_headers(name, uid, e.expected),
            ) from None
        except UploadTruncated as e:
            raise BlobUploadInvalid(f"truncated chunk: {e}", detail={"uuid": uid}) from None
        except UploadUnknown:
            self._sessions.pop(uid, None)
            raise BlobUploadUnknown(detail={"uuid": uid}) from None
        except OSError as e:
            if is_out_of_space(e):
                self._sessions.pop(uid, None)  # the upload area deleted the upload
            raise
        self.log.debug("upload {uid} now holds {bytes} bytes", uid=uid, bytes=new_size)
        return new_size

    async def _complete(self, name: str, uid: str, session: _Session, expected: Digest) -> None:
        """Verify upload ``uid`` against ``expected`` and commit it, unless the
        blob is already stored. A mismatch deletes the upload."""
        uploads = self._area()
        try:
            actual = await uploads.digest(uid)
            size = uploads.size(uid)
        except UploadUnknown:
            self._sessions.pop(uid, None)
            raise BlobUploadUnknown(detail={"uuid": uid}) from None
        if actual != expected:
            self._sessions.pop(uid, None)
            await uploads.delete(uid)
            raise DigestInvalid(detail={"expected": str(expected), "actual": str(actual)})
        if await self._backend.stat_blob(name, expected) is None:
            try:
                await self._backend.commit_blob(name, expected, uploads.path(uid), size)
            except InsufficientStorage:
                # Where the blob goes is full: the client must push it again later, all of it.
                self._sessions.pop(uid, None)
                await uploads.delete(uid)
                raise
            created = True
        else:
            created = False
        self._sessions.pop(uid, None)
        await uploads.delete(uid)
        self.log.info(
            "blob {digest} ({bytes} bytes) pushed to {repo}{existing} in {duration:.3f}s",
            digest=str(expected),
            bytes=size,
            repo=name,
            existing="" if created else " (already stored)",
            duration=self._clock.seconds() - session.started,
        )

    # -- manifests ----------------------------------------------------------

    async def _put_manifest(self, request: IRequest, name: str, reference: str) -> bytes:
        ref = parse_reference(reference)
        tags: list[str] = []
        if isinstance(ref, str):
            tags.append(ref)
        else:
            tags.extend(check_tag(t.decode("utf-8", "replace")) for t in request.args.get(b"tag") or [])
        limit = self._max_manifest_size
        declared = _content_length(request)
        content = request.content
        if (declared is not None and declared > limit) or _body_length(content) > limit:
            raise SizeInvalid(
                f"manifest exceeds the {limit}-byte limit",
                detail={"limit": limit, "size": declared},
                status=413,
            )
        # Bounded, and at most a few MiB: twisted.web keeps bodies under 100 kB
        # in memory, so a typical manifest is not even a file read.
        body = content.read(limit + 1) if content is not None else b""
        if len(body) > limit:
            raise SizeInvalid(f"manifest exceeds the {limit}-byte limit", detail={"limit": limit}, status=413)
        parsed = parse_manifest(body, _text(request.getHeader(b"content-type")))
        if isinstance(ref, Digest) and ref != parsed.digest:
            raise DigestInvalid(
                "the manifest's digest does not match the reference",
                detail={"reference": str(ref), "actual": str(parsed.digest)},
            )
        self._references.check_count(parsed)
        self.log.debug(
            "manifest {digest} for {repo}: checking its {references} references",
            digest=str(parsed.digest),
            repo=name,
            references=len(parsed.required_blobs()) + len(parsed.required_manifests()),
        )
        try:
            await self._references.check_exist(self._backend, name, parsed)
        except CancelledError:
            self.log.info(
                "manifest {digest} for {repo}: reference check stopped, the client went away",
                digest=str(parsed.digest),
                repo=name,
            )
            raise
        record = parsed.record()
        await self._backend.put_manifest(name, record, body, tags[0] if tags else None)
        for tag in tags[1:]:
            await self._backend.put_manifest(name, record, body, tag)
        self.log.info(
            "manifest {digest} ({media_type}) pushed to {repo} as {tags}",
            digest=str(parsed.digest),
            media_type=parsed.media_type,
            repo=name,
            tags=tags,
        )
        request.setResponseCode(201)
        request.setHeader(b"location", f"/v2/{name}/manifests/{parsed.digest}".encode())
        request.setHeader(b"docker-content-digest", str(parsed.digest).encode())
        if parsed.subject is not None:
            request.setHeader(b"oci-subject", str(parsed.subject).encode())
        if isinstance(ref, Digest) and tags:
            request.responseHeaders.setRawHeaders(b"oci-tag", [t.encode() for t in tags])
        request.setHeader(b"content-length", b"0")
        return b""

    async def _get_manifest(self, request: IRequest, name: str, reference: str) -> bytes:
        ref = parse_reference(reference)
        if isinstance(ref, Digest):
            digest = ref
        else:
            resolved = await self._backend.resolve_tag(name, ref)
            if resolved is None:
                raise ManifestUnknown(detail={"tag": ref})
            digest = resolved
        record = await self._backend.get_manifest(name, digest)
        if record is None:
            raise ManifestUnknown(detail={"digest": str(digest)})
        accept = request.requestHeaders.getRawHeaders(b"accept") or []
        if not negotiate(accept, record.media_type):
            raise ManifestUnknown(
                f"the manifest is {record.media_type}, which the Accept header does not allow",
                detail={"digest": str(digest), "mediaType": record.media_type},
            )
        body: bytes | None = None
        not_modified = _etag_matches(request.requestHeaders.getRawHeaders(b"if-none-match") or [], digest)
        if not not_modified and request.method != b"HEAD":
            body = await self._backend.read_blob(name, digest, self._max_manifest_size)
            if body is None:
                self.log.warn(
                    "manifest {digest} of {repo} is recorded but its bytes are missing", digest=str(digest), repo=name
                )
                raise ManifestUnknown(detail={"digest": str(digest)})
        request.setHeader(b"docker-content-digest", str(digest).encode())
        request.setHeader(b"etag", f'"{digest}"'.encode())
        if not_modified:
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-type", record.media_type.encode())
        # HEAD needs no body: the record knows its size.
        request.setHeader(b"content-length", b"%d" % (record.size if body is None else len(body)))
        return body or b""

    # -- discovery ------------------------------------------------------------

    async def _tags(self, request: IRequest, name: str) -> bytes:
        n, last = parse_pagination(request.args, self._max_page_size)
        size = self._max_page_size if n is None else n
        page = await self._backend.list_tags(name, size, last)
        if page is None:
            raise NameUnknown(detail={"name": name})
        tags = [] if size == 0 else sorted(page.items)
        if size and page.more and tags:
            _link_next(request, f"/v2/{name}/tags/list", size, tags[-1])
        return _json(request, {"name": name, "tags": tags})

    async def _catalog(self, request: IRequest) -> bytes:
        n, last = parse_pagination(request.args, self._max_page_size, catalog=True)
        size = self._max_page_size if n is None else n
        repos: list[str] = []
        if size:
            page = await self._backend.list_repositories(size, last)
            repos = sorted(page.items)
            if page.more and repos:
                _link_next(request, "/v2/_catalog", size, repos[-1])
        return _json(request, {"repositories": repos})

    async def _referrers(self, request: IRequest, name: str, digest_text: str) -> bytes:
        subject = parse_digest(digest_text)
        records = await self._backend.referrers(name, subject)
        artifact_type = _arg(request, b"artifactType")
        if artifact_type:
            records = [r for r in records if r.artifact_type == artifact_type]
            request.setHeader(b"oci-filters-applied", b"artifactType")
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [r.descriptor() for r in records]}
        return _json(request, index, OCI_INDEX.encode())


# -- helpers -----------------------------------------------------------------


def _no_space(error: BaseException) -> InsufficientStorage:
    return InsufficientStorage(detail={"reason": errno_name(error)})


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _arg(request: IRequest, key: bytes) -> str | None:
    values: list[bytes] = request.args.get(key) or []
    return values[0].decode("utf-8", "replace") if values else None


def _json(request: IRequest, obj: Any, content_type: bytes = JSON_CONTENT_TYPE) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def _link_next(request: IRequest, path: str, n: int, last: str) -> None:
    url = f"{path}?n={n}&last={quote(last, safe='/')}"
    request.setHeader(b"link", f'<{url}>; rel="next"'.encode())


def _content_length(request: IRequest) -> int | None:
    raw = request.getHeader(b"content-length")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise SizeInvalid(f"invalid Content-Length {_text(raw)!r}") from None
    if value < 0:
        raise SizeInvalid(f"invalid Content-Length {_text(raw)!r}")
    return value


def _body_length(content: IO[bytes] | None) -> int:
    """Bytes left in the spooled body, found by seeking (nothing is read)."""
    if content is None:
        return 0
    here = content.tell()
    end = content.seek(0, 2)
    content.seek(here)
    return end - here


_BYTE_RANGE = re.compile(rb"\s*([0-9]+)\s*-\s*([0-9]+)\s*")


def _backwards_range(value: bytes) -> bool:
    """Whether a ``Range: bytes=...`` header holds a spec whose last byte
    comes before its first (``bytes=500-0``)."""
    unit, sep, specs = value.partition(b"=")
    if not sep or unit.strip().lower() != b"bytes":
        return False
    for spec in specs.split(b","):
        m = _BYTE_RANGE.fullmatch(spec)
        if m is not None and int(m.group(2)) < int(m.group(1)):
            return True
    return False


def _range_value(size: int) -> bytes:
    """``0-<last byte>``, as distribution writes it (``0-0`` when empty)."""
    return b"0-%d" % max(size - 1, 0)


def _upload_state_headers(name: str, uid: str, size: int) -> dict[str, str]:
    return {
        "Location": f"/v2/{name}/blobs/uploads/{uid}",
        "Range": _range_value(size).decode(),
        "Docker-Upload-UUID": uid,
    }


def _upload_headers(request: IRequest, name: str, uid: str, size: int) -> None:
    for k, v in _upload_state_headers(name, uid, size).items():
        request.setHeader(k.encode(), v.encode())
    request.setHeader(b"content-length", b"0")


def _created_blob(request: IRequest, name: str, digest: Digest) -> bytes:
    request.setResponseCode(201)
    request.setHeader(b"location", f"/v2/{name}/blobs/{digest}".encode())
    request.setHeader(b"docker-content-digest", str(digest).encode())
    request.setHeader(b"content-length", b"0")
    return b""


def _etag_matches(values: list[bytes], digest: Digest) -> bool:
    wanted = str(digest)
    for value in values:
        for item in value.decode("latin-1").split(","):
            tag = item.strip()
            if tag == "*":
                return True
            if tag.startswith("W/"):
                tag = tag[2:]
            if tag.strip('"') == wanted:
                return True
    return False
