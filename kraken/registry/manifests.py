"""Manifest media types, strict manifest parsing and ``Accept`` negotiation.

Four manifest types are accepted: Docker schema2 manifest and manifest list,
OCI image manifest and OCI image index. Legacy schema1 is refused. Parsing
checks what the registry relies on (the structure, every descriptor, the
digests and sizes) and keeps everything else untouched: the registry stores
and serves the exact bytes it was given.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import attrs

from kraken.core import Digest, DigestError
from kraken.registry.errors import ManifestInvalid
from kraken.registry.source import ManifestRecord

# Docker schema2 (distribution's manifest-v2-2.md).
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_PLUGIN_CONFIG = "application/vnd.docker.plugin.v1+json"

# Legacy schema1: refused.
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

# OCI image-spec.
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDISTRIBUTABLE_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

IMAGE_MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
MANIFEST_TYPES = IMAGE_MANIFEST_TYPES | INDEX_TYPES
DOCKER_TYPES = frozenset({DOCKER_MANIFEST, DOCKER_MANIFEST_LIST})
OCI_TYPES = frozenset({OCI_MANIFEST, OCI_INDEX})
LEGACY_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

#: Layers that may legitimately be absent from the registry when they carry
#: ``urls`` (Windows base layers and the like).
FOREIGN_LAYER_TYPES = frozenset(
    {
        DOCKER_FOREIGN_LAYER,
        OCI_LAYER_NONDISTRIBUTABLE,
        OCI_LAYER_NONDISTRIBUTABLE_GZIP,
        OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
    }
)

#: Content-Types that say nothing about the manifest type; treated as absent,
#: as distribution does (it then looks at the ``mediaType`` field).
GENERIC_CONTENT_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})

# RFC 6838 §4.2 type/subtype names (what the OCI descriptor schema requires).
_RESTRICTED_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
MEDIA_TYPE_RE = re.compile(rf"{_RESTRICTED_NAME}/{_RESTRICTED_NAME}")


@attrs.frozen
class Descriptor:
    """One OCI/Docker content descriptor, validated."""

    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None
    annotations: Mapping[str, str] | None = attrs.field(default=None, eq=False, hash=False)

    @property
    def is_foreign(self) -> bool:
        """A non-distributable layer the registry need not hold."""
        return self.media_type in FOREIGN_LAYER_TYPES and bool(self.urls)


@attrs.frozen
class ParsedManifest:
    media_type: str
    digest: Digest
    size: int
    #: config first, then the layers (empty for lists and indexes)
    blobs: tuple[Descriptor, ...] = ()
    #: child manifests of a manifest list or index (empty for image manifests)
    manifests: tuple[Descriptor, ...] = ()
    subject: Digest | None = None
    artifact_type: str | None = None
    annotations: Mapping[str, str] | None = attrs.field(default=None, eq=False, hash=False)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def config(self) -> Descriptor | None:
        return self.blobs[0] if self.blobs and not self.is_index else None

    def required_blobs(self) -> list[Digest]:
        """Blob digests that must exist before the manifest is accepted
        (unique, in order; foreign layers with ``urls`` excluded)."""
        return _unique(d.digest for d in self.blobs if not d.is_foreign)

    def required_manifests(self) -> list[Digest]:
        """Child manifests that must exist in the repository."""
        return _unique(d.digest for d in self.manifests)

    def record(self) -> ManifestRecord:
        return ManifestRecord(
            digest=self.digest,
            media_type=self.media_type,
            size=self.size,
            artifact_type=self.artifact_type,
            subject=self.subject,
            annotations=None if self.annotations is None else dict(self.annotations),
        )


def bare_media_type(value: str | bytes | None) -> str:
    """``value`` without parameters, lower-cased and stripped; ``""`` for None."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value.split(";", 1)[0].strip().lower()


async def manifest_closure(
    read: Callable[[Digest, str | None], Awaitable[ParsedManifest]],
    top: Digest,
    *,
    max_depth: int,
    more: Callable[[Digest], Awaitable[Iterable[Digest]]] | None = None,
) -> tuple[list[Digest], list[Digest]]:
    """The manifests of ``top``'s image, breadth first from ``top`` (each once), and the blobs they require
    (each once). ``read(digest, media_type)`` parses one manifest (``media_type``: what the index naming it
    says, None for ``top``); ``more(digest)``: further manifests belonging to it (its referrers). Manifests
    more than ``max_depth`` levels below ``top`` are left out."""
    manifests: list[Digest] = []
    blobs: dict[Digest, None] = {}
    todo: list[tuple[Digest, str | None, int]] = [(top, None, 0)]
    while todo:
        digest, media_type, depth = todo.pop(0)
        if digest in manifests:
            continue
        manifests.append(digest)
        parsed = await read(digest, media_type)
        blobs.update(dict.fromkeys(parsed.required_blobs()))
        if depth < max_depth:
            todo.extend((child.digest, child.media_type, depth + 1) for child in parsed.manifests)
            if more is not None:
                todo.extend((d, None, depth + 1) for d in await more(digest))
    return manifests, list(blobs)


def parse_manifest(body: bytes, content_type: str | None, algorithm: str = "sha256") -> ParsedManifest:
    """Validate a pushed manifest and describe it.

    The media type is the ``mediaType`` field when present; else the pushed
    ``Content-Type`` when it is an OCI manifest or index type matching the
    document's structure; else it is inferred from the structure
    (``manifests`` → OCI index, ``config`` → OCI image manifest). Docker
    schema2 documents must carry ``mediaType``, as their spec requires.
    A generic Content-Type (``application/json``, ``text/plain``,
    ``application/octet-stream``) counts as absent. Its digest is of
    ``algorithm``: SHA-256 unless the manifest is named by another digest.

    Raises ``ManifestInvalid`` (MANIFEST_INVALID, 400) with a message naming
    the problem.
    """
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise _invalid("manifest is not valid JSON") from None
    if not isinstance(doc, dict):
        raise _invalid("manifest must be a JSON object")
    media_type = _manifest_type(doc, bare_media_type(content_type))
    annotations = _annotations(doc.get("annotations"), "annotations")
    subject, artifact_type = _oci_fields(doc, media_type)
    blobs: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    if media_type in INDEX_TYPES:
        manifests = _index_children(doc, media_type)
    else:
        blobs = _image_blobs(doc, media_type)
        if media_type in OCI_TYPES and artifact_type is None:
            # OCI 1.1 referrers: without artifactType, an image manifest's
            # artifact type is its config's mediaType.
            artifact_type = blobs[0].media_type
    return ParsedManifest(
        media_type=media_type,
        digest=Digest.from_bytes(body, algorithm),
        size=len(body),
        blobs=blobs,
        manifests=manifests,
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )


def _manifest_type(doc: dict[str, Any], ct: str) -> str:
    """The manifest's media type from its ``mediaType`` field, the pushed
    (bare) Content-Type ``ct`` and its structure; refuses schema1, other
    schema versions, unknown types and contradictions."""
    field = _checked_type_field(doc, ct)
    has_index = "manifests" in doc
    has_image = "config" in doc or "layers" in doc
    if has_index and has_image:
        raise _invalid("a manifest cannot have both 'manifests' and 'config'/'layers'")
    if field is not None:
        return field
    if ct in OCI_TYPES:
        return ct
    if ct in DOCKER_TYPES:
        raise _invalid(f"a {ct} manifest must declare its mediaType")
    if has_index:
        return OCI_INDEX
    if has_image:
        return OCI_MANIFEST
    raise _invalid("cannot tell the manifest type: no mediaType, config, layers or manifests")


def _checked_type_field(doc: dict[str, Any], ct: str) -> str | None:
    """The ``mediaType`` field (or None), checked with ``schemaVersion``
    against what this registry accepts and against the Content-Type."""
    field = doc.get("mediaType")
    if field is not None and not isinstance(field, str):
        raise _invalid("mediaType must be a string")
    if ct in LEGACY_TYPES or field in LEGACY_TYPES:
        raise _invalid("schema1 manifests are not supported; push a Docker schema2 or OCI manifest")
    version = doc.get("schemaVersion")
    if not _is_int(version) or version != 2:
        if _is_int(version) and version == 1:
            raise _invalid("schema1 manifests are not supported; push a Docker schema2 or OCI manifest")
        raise _invalid(f"schemaVersion must be 2, not {version!r}")
    if field is not None and field not in MANIFEST_TYPES:
        raise _invalid(f"unsupported manifest mediaType {field!r}")
    if ct not in GENERIC_CONTENT_TYPES:
        if ct not in MANIFEST_TYPES:
            raise _invalid(f"unsupported manifest Content-Type {ct!r}")
        if field is not None and field != ct:
            raise _invalid(f"Content-Type {ct!r} does not match the manifest's mediaType {field!r}")
    return field


def _oci_fields(doc: dict[str, Any], media_type: str) -> tuple[Digest | None, str | None]:
    """``subject`` and ``artifactType`` of an OCI manifest or index (Docker types have neither)."""
    subject: Digest | None = None
    artifact_type: str | None = None
    if media_type in OCI_TYPES:
        if doc.get("subject") is not None:
            subject = _descriptor(doc["subject"], "subject").digest
        if doc.get("artifactType") is not None:
            artifact_type = _media_type(doc["artifactType"], "artifactType")
    return subject, artifact_type


def _index_children(doc: dict[str, Any], media_type: str) -> tuple[Descriptor, ...]:
    """The child manifests of a manifest list or image index."""
    if "config" in doc or "layers" in doc:
        raise _invalid(f"a {media_type} document must not have 'config' or 'layers'")
    raw = doc.get("manifests")
    if not isinstance(raw, list):
        raise _invalid("'manifests' must be a list of descriptors")
    return tuple(_descriptor(m, f"manifests[{i}]") for i, m in enumerate(raw))


def _image_blobs(doc: dict[str, Any], media_type: str) -> tuple[Descriptor, ...]:
    """The config, then the layers, of an image manifest."""
    if "manifests" in doc:
        raise _invalid(f"a {media_type} document must not have 'manifests'")
    if "config" not in doc:
        raise _invalid(f"a {media_type} document must have a 'config' descriptor")
    config = _descriptor(doc["config"], "config")
    raw_layers = doc.get("layers", [])
    if not isinstance(raw_layers, list):
        raise _invalid("'layers' must be a list of descriptors")
    return (config, *(_descriptor(x, f"layers[{i}]") for i, x in enumerate(raw_layers)))


def accepted_types(accept_header_values: Iterable[bytes | str]) -> set[str]:
    """Every media type named by the ``Accept`` headers, parameters dropped."""
    out: set[str] = set()
    for value in accept_header_values:
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        for item in text.split(","):
            bare = bare_media_type(item)
            if bare:
                out.add(bare)
    return out


def negotiate(accept_header_values: Iterable[bytes | str], media_type: str) -> bool:
    """Whether a stored manifest of ``media_type`` may be served to a client
    that sent these ``Accept`` header values.

    ``Accept`` may be repeated or comma-separated; ``q=`` and other
    parameters are ignored. No ``Accept`` at all, ``*/*`` or
    ``application/*`` accepts everything.

    Otherwise an OCI manifest or index is served only if its exact type is
    listed. This is distribution's rule: a client whose ``Accept`` lists only
    Docker types (an old docker or a schema2-only tool) gets MANIFEST_UNKNOWN
    (404) for an OCI manifest rather than a document it cannot read; its log
    says "OCI manifest found, but accept header does not support OCI
    manifests". A 404 also lets a containerd mirror configuration fall back
    upstream.

    Docker schema2 manifests and manifest lists are served whatever the
    ``Accept``: distribution would down-convert them to schema1 or pick a
    platform, and this registry does neither, so the stored bytes (with their
    exact Content-Type) are the only sensible answer; clients check the type.
    """
    accepted = accepted_types(accept_header_values)
    if not accepted or "*/*" in accepted or "application/*" in accepted:
        return True
    if media_type in accepted:
        return True
    return media_type in DOCKER_TYPES


def _invalid(message: str, detail: Any = None) -> ManifestInvalid:
    return ManifestInvalid(message, detail)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unique(digests: Iterable[Digest]) -> list[Digest]:
    seen: dict[Digest, None] = {}
    for d in digests:
        seen.setdefault(d, None)
    return list(seen)


def _media_type(value: object, where: str) -> str:
    if not isinstance(value, str) or not MEDIA_TYPE_RE.fullmatch(value):
        raise _invalid(f"{where} is not a valid media type: {value!r}")
    return value


def _annotations(value: object, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _invalid(f"{where} must map strings to strings")
    return dict(value)


def _descriptor(value: object, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be a descriptor object")
    media_type = _media_type(value.get("mediaType"), f"{where}.mediaType")
    raw_digest = value.get("digest")
    if not isinstance(raw_digest, str):
        raise _invalid(f"{where}.digest must be a string")
    try:
        digest = Digest.parse(raw_digest)
    except DigestError as e:
        raise _invalid(f"{where}.digest is invalid: {e}", {"digest": raw_digest}) from None
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}.size must be a non-negative integer, not {size!r}")
    urls = value.get("urls")
    if urls is None:
        urls = []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise _invalid(f"{where}.urls must be a list of strings")
    artifact_type = value.get("artifactType")
    if artifact_type is not None:
        artifact_type = _media_type(artifact_type, f"{where}.artifactType")
    annotations = _annotations(value.get("annotations"), f"{where}.annotations")
    data = value.get("data")
    if data is not None:
        _check_data(data, digest, size, where)
    return Descriptor(media_type, digest, size, tuple(urls), artifact_type, annotations)


def _check_data(data: object, digest: Digest, size: int, where: str) -> None:
    """Embedded ``data`` must be base64 of exactly the described content."""
    if not isinstance(data, str):
        raise _invalid(f"{where}.data must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"{where}.data is not valid base64") from None
    if len(raw) != size or Digest.from_bytes(raw, digest.algorithm) != digest:
        raise _invalid(f"{where}.data does not match its digest and size")
