"""The blob upload endpoints: ``POST /v2/<name>/blobs/uploads/`` (start,
monolithic push with ``?digest=``, cross-repository mount with ``?mount=``),
``PATCH``, ``PUT``, ``GET`` and ``DELETE`` of ``/v2/<name>/blobs/uploads/<uid>``.

Upload bodies are never read on the reactor thread: twisted.web has spooled
them to ``request.content`` and ``UploadArea.append`` copies and hashes them
in its worker. A chunk's ``Content-Range`` must start where the upload ends
(else 416 with the current ``Range``). Completing an upload verifies its
digest and hands the file to the source, unless the blob is already stored;
an upload whose data met a full disk is deleted with its session (the client
starts again). Sessions are ``kraken.registry.sessions``.

With a blob size limit (``UploadLimits.max_blob_size``), an upload whose
``Content-Length``, ``Content-Range``, running size or final size goes over
it is deleted with its session and refused with 413 SIZE_INVALID; a body
the spool is still receiving is refused as soon as it passes the limit
(``too_large``, through the site's ``body_refused``).
"""

from __future__ import annotations

from typing import IO

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from kraken.core import Digest
from kraken.files import is_out_of_space
from kraken.registry.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    InsufficientStorage,
    RangeInvalid,
    SizeInvalid,
)
from kraken.registry.manifests import bare_media_type
from kraken.registry.messages import (
    arg,
    body_length,
    content_length,
    parse_content_range,
    range_value,
    registry_logger,
    text,
)
from kraken.registry.names import check_digest_algorithm, is_valid_name, parse_digest
from kraken.registry.sessions import UploadSession, UploadSessions
from kraken.registry.source import IRegistrySource
from kraken.store.uploads import RangeMismatch, UploadTruncated, UploadUnknown


class UploadHandlers:
    """Blob uploads into an ``IRegistrySource``, through ``UploadSessions``."""

    def __init__(self, source: IRegistrySource, sessions: UploadSessions, *, clock: IReactorTime) -> None:
        self._source = source
        self._sessions = sessions
        self._clock = clock
        self.log = registry_logger(self)

    async def start(self, request: IRequest, name: str, _: str = "") -> bytes:
        self._sessions.area()  # UNSUPPORTED on a read-only registry, whatever the query asks
        check_digest_algorithm(arg(request, b"digest-algorithm"))
        mount = arg(request, b"mount")
        if mount is not None:
            mounted = await self._try_mount(name, mount, arg(request, b"from"))
            if mounted is not None:
                return _created_blob(request, name, mounted)
        digest_arg = arg(request, b"digest")
        if digest_arg is not None:
            return await self._monolithic(request, name, parse_digest(digest_arg))
        uid, _session = await self._sessions.start(name, client=_client(request))
        self.log.info("upload {uid} started for {repo}", uid=uid, repo=name)
        request.setResponseCode(202)
        _upload_headers(request, name, uid, 0)
        return b""

    async def patch(self, request: IRequest, name: str, uid: str) -> bytes:
        self._sessions.idle(name, uid)
        content_type = request.getHeader(b"content-type")
        if content_type is not None and bare_media_type(content_type) not in ("", "application/octet-stream"):
            raise BlobUploadInvalid(
                "chunks must be sent as application/octet-stream", detail={"content_type": text(content_type)}
            )
        size = await self._append_body(request, name, uid, allow_range=True)
        request.setResponseCode(202)
        _upload_headers(request, name, uid, size)
        return b""

    async def status(self, request: IRequest, name: str, uid: str) -> bytes:
        self._sessions.get(name, uid)
        size = self._sessions.size(uid)
        request.setResponseCode(204)
        _upload_headers(request, name, uid, size)
        return b""

    async def cancel(self, request: IRequest, name: str, uid: str) -> bytes:
        self._sessions.idle(name, uid)
        await self._sessions.discard(uid)
        self.log.info("upload {uid} cancelled for {repo}", uid=uid, repo=name)
        request.setResponseCode(204)
        request.setHeader(b"content-length", b"0")
        return b""

    async def finish(self, request: IRequest, name: str, uid: str) -> bytes:
        session = self._sessions.idle(name, uid)
        values = request.args.get(b"digest") or []
        if not values:
            raise DigestInvalid("the digest parameter is required to complete an upload")
        digests = {parse_digest(v.decode("utf-8", "replace")) for v in values}
        if len(digests) != 1:
            raise DigestInvalid("digest parameters disagree", detail={"digests": sorted(map(str, digests))})
        (expected,) = digests
        session.finishing = True
        try:
            if request.getHeader(b"content-range") is not None or body_length(request.content) > 0:
                await self._append_body(request, name, uid, allow_range=True)
            await self._complete(name, uid, session, expected)
        finally:
            session.finishing = False
        return _created_blob(request, name, expected)

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
        if await self._source.stat_blob(name, digest) is None:
            return None
        self.log.info("blob {digest} mounted into {repo} from {source}", digest=str(digest), repo=name, source=source)
        return digest

    async def _monolithic(self, request: IRequest, name: str, expected: Digest) -> bytes:
        declared = content_length(request)
        if declared is not None:
            self._check_size(declared)
        uid, session = await self._sessions.start(name, finishing=True, client=_client(request))
        try:
            await self._append_body(request, name, uid, allow_range=False)
            await self._complete(name, uid, session, expected)
        except BaseException:
            await self._sessions.discard_if_open(uid)
            raise
        return _created_blob(request, name, expected)

    async def _append_body(self, request: IRequest, name: str, uid: str, *, allow_range: bool) -> int:
        """Append the request body to upload ``uid``; return the new size.

        With ``Content-Range: <start>-<end>`` the chunk must start at the
        current size (else 416 with the current ``Range``) and hold exactly
        ``end - start + 1`` bytes; without it the body is a streamed append.
        """
        uploads = self._sessions.area()
        content = request.content
        declared = content_length(request)
        size = self._sessions.size(uid)
        raw_range = request.getHeader(b"content-range") if allow_range else None
        offset, length = _chunk(raw_range, declared, content, name, uid, size)
        if content is None or (length == 0 and offset is None):
            return size
        await self._refuse_if_too_large(uid, size + (length if length is not None else body_length(content)))
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
            self._sessions.forget(uid)
            raise BlobUploadUnknown(detail={"uuid": uid}) from None
        except OSError as e:
            if is_out_of_space(e):
                self._sessions.forget(uid)  # the upload area deleted the upload
            raise
        await self._refuse_if_too_large(uid, new_size)
        self.log.debug("upload {uid} now holds {bytes} bytes", uid=uid, bytes=new_size)
        return new_size

    def _check_size(self, size: int) -> None:
        limit = self._sessions.limits.max_blob_size
        if limit and size > limit:
            raise too_large(limit, size)

    async def _refuse_if_too_large(self, uid: str, size: int) -> None:
        """413 SIZE_INVALID, the upload deleted with its session, if ``size`` is over the blob size limit."""
        try:
            self._check_size(size)
        except SizeInvalid:
            await self._sessions.discard_if_open(uid)
            self.log.info("upload {uid} refused: {bytes} bytes is over the limit", uid=uid, bytes=size)
            raise

    async def _complete(self, name: str, uid: str, session: UploadSession, expected: Digest) -> None:
        """Verify upload ``uid`` against ``expected`` and commit it, unless the
        blob is already stored. A mismatch deletes the upload.

        An upload area without running hashes (the proxy's) leaves the check to
        the source's commit, which verifies the digest before anything is
        visible (the origin's) and refuses a mismatch with ``DigestInvalid``; a
        blob already stored is checked here, by reading the upload."""
        uploads = self._sessions.area()
        size = self._sessions.size(uid)
        created = await self._source.stat_blob(name, expected) is None
        if uploads.hashing or not created:
            await self._verify(uid, expected)
        if created:
            try:
                await self._source.commit_blob(name, expected, uploads.path(uid), size, upload=uid)
            except (InsufficientStorage, DigestInvalid):
                # Where the blob goes is full (the client must push it again later, all of it), or the bytes
                # are not the blob: the upload is useless.
                await self._sessions.discard(uid)
                raise
        await self._sessions.discard(uid)
        self.log.info(
            "blob {digest} ({bytes} bytes) pushed to {repo}{existing} in {duration:.3f}s",
            digest=str(expected),
            bytes=size,
            repo=name,
            existing="" if created else " (already stored)",
            duration=self._clock.seconds() - session.started,
        )

    async def _verify(self, uid: str, expected: Digest) -> None:
        """DIGEST_INVALID, the upload deleted with its session, unless upload ``uid`` hashes to ``expected``."""
        try:
            actual = await self._sessions.area().digest(uid, expected.algorithm)
        except UploadUnknown:
            self._sessions.forget(uid)
            raise BlobUploadUnknown(detail={"uuid": uid}) from None
        if actual != expected:
            await self._sessions.discard(uid)
            raise DigestInvalid(detail={"expected": str(expected), "actual": str(actual)})


def too_large(limit: int, size: int | None = None) -> SizeInvalid:
    """The answer to a blob over the size limit: 413 SIZE_INVALID."""
    got = "" if size is None else f" (this one: {size} bytes or more)"
    return SizeInvalid(
        f"blob too large: this registry takes blobs of at most {limit} bytes{got}",
        detail={"limit": limit, "size": size},
        status=413,
    )


def _client(request: IRequest) -> str:
    """The client's address (its host), which per-client limits count."""
    return str(getattr(request.getClientAddress(), "host", "") or "")


def _chunk(
    raw_range: bytes | None, declared: int | None, content: IO[bytes] | None, name: str, uid: str, size: int
) -> tuple[int | None, int | None]:
    """Where the body goes and how long it is: ``(offset, length)`` from the
    chunk's ``Content-Range`` (checked against the upload's ``size`` and the
    declared ``Content-Length``), or ``(None, Content-Length)`` without one."""
    if raw_range is None:
        return None, declared
    state = _upload_state_headers(name, uid, size)
    parsed = parse_content_range(raw_range)
    if parsed is None:
        raise RangeInvalid(f"malformed Content-Range {text(raw_range)!r}: expected <start>-<end>", headers=state)
    offset, end = parsed
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
    if declared is None and body_length(content) > length:
        raise SizeInvalid(f"the body is longer than Content-Range {offset}-{end}")
    return offset, length


def _upload_state_headers(name: str, uid: str, size: int) -> dict[str, str]:
    return {
        "Location": f"/v2/{name}/blobs/uploads/{uid}",
        "Range": range_value(size).decode(),
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
