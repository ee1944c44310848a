"""The manifest endpoints: ``PUT``, ``GET`` and ``HEAD`` of
``/v2/<name>/manifests/<reference>`` (a tag or a digest).

Only manifests are read and parsed here, capped by ``max_manifest_size``
(checked against ``Content-Length`` and the spooled body before a byte is
read). Parsing and media types are ``kraken.registry.manifests``; how many
references a manifest may have and how they are looked up is
``kraken.registry.references``. A push by digest may name tags with
``?tag=``; a pull negotiates the stored type against ``Accept`` and answers
``If-None-Match`` with 304. Manifest deletion is not supported.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.web.iweb import IRequest

from kraken.core import Digest
from kraken.registry.errors import DigestInvalid, ManifestUnknown, SizeInvalid
from kraken.registry.manifests import ParsedManifest, negotiate, parse_manifest
from kraken.registry.messages import body_length, content_length, etag_matches, registry_logger, text
from kraken.registry.names import check_tag, parse_reference
from kraken.registry.references import ReferencePolicy
from kraken.registry.source import IRegistrySource, ManifestRecord


class ManifestHandlers:
    """Pushes and pulls of manifests through an ``IRegistrySource``."""

    def __init__(self, source: IRegistrySource, *, references: ReferencePolicy, max_manifest_size: int) -> None:
        self._source = source
        self._references = references
        self._max_manifest_size = max_manifest_size
        self.log = registry_logger(self)

    async def put(self, request: IRequest, name: str, reference: str) -> bytes:
        ref = parse_reference(reference)
        tags = [ref] if isinstance(ref, str) else [check_tag(t.decode("utf-8", "replace")) for t in _tag_args(request)]
        body = self._read_body(request)
        algorithm = ref.algorithm if isinstance(ref, Digest) else "sha256"  # by tag: sha256, as clients expect
        parsed = parse_manifest(body, text(request.getHeader(b"content-type")), algorithm)
        if isinstance(ref, Digest) and ref != parsed.digest:
            raise DigestInvalid(
                "the manifest's digest does not match the reference",
                detail={"reference": str(ref), "actual": str(parsed.digest)},
            )
        await self._check_references(name, parsed)
        record = parsed.record()
        await self._source.put_manifest(name, record, body, tags[0] if tags else None)
        for tag in tags[1:]:
            await self._source.put_manifest(name, record, body, tag)
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

    def _read_body(self, request: IRequest) -> bytes:
        """The pushed manifest's bytes, refused (413) past the limit before
        anything is read."""
        limit = self._max_manifest_size
        declared = content_length(request)
        content = request.content
        if (declared is not None and declared > limit) or body_length(content) > limit:
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
        return body

    async def _check_references(self, name: str, parsed: ParsedManifest) -> None:
        """Refuse a manifest with too many references, or one that names a
        blob or child manifest the source lacks."""
        self._references.check_count(parsed)
        self.log.debug(
            "manifest {digest} for {repo}: checking its {references} references",
            digest=str(parsed.digest),
            repo=name,
            references=len(parsed.required_blobs()) + len(parsed.required_manifests()),
        )
        try:
            await self._references.check_exist(self._source, name, parsed)
        except CancelledError:
            self.log.info(
                "manifest {digest} for {repo}: reference check stopped, the client went away",
                digest=str(parsed.digest),
                repo=name,
            )
            raise

    async def get(self, request: IRequest, name: str, reference: str) -> bytes:
        digest, record = await self._find(name, reference)
        accept = request.requestHeaders.getRawHeaders(b"accept") or []
        if not negotiate(accept, record.media_type):
            raise ManifestUnknown(
                f"the manifest is {record.media_type}, which the Accept header does not allow",
                detail={"digest": str(digest), "mediaType": record.media_type},
            )
        body: bytes | None = None
        not_modified = etag_matches(request.requestHeaders.getRawHeaders(b"if-none-match") or [], digest)
        if not not_modified and request.method != b"HEAD":
            body = await self._source.read_blob(name, digest, self._max_manifest_size)
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

    async def _find(self, name: str, reference: str) -> tuple[Digest, ManifestRecord]:
        """The digest and record a tag or digest names in ``name`` (MANIFEST_UNKNOWN if none)."""
        ref = parse_reference(reference)
        if isinstance(ref, Digest):
            digest = ref
        else:
            resolved = await self._source.resolve_tag(name, ref)
            if resolved is None:
                raise ManifestUnknown(detail={"tag": ref})
            digest = resolved
        record = await self._source.get_manifest(name, digest)
        if record is None:
            raise ManifestUnknown(detail={"digest": str(digest)})
        return digest, record


def _tag_args(request: IRequest) -> list[bytes]:
    tags: list[bytes] = request.args.get(b"tag") or []
    return tags
