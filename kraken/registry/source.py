"""The registry API's source of blobs and manifests: what the API needs from
the daemon that serves it (``IRegistrySource``), and the values it passes
(``ManifestRecord``, ``Page``).

"Source", not "backend": a backend is a storage backend (``kraken.backends``).
The proxy implements this over the origin and build-index clients
(``kraken.proxy.source.ProxySource``); the agent, read-only, over its
scheduler (``kraken.agent.source.AgentSource``). Both list tags,
repositories and referrers through the build-index client, so the same
handlers (``kraken.registry.http_listings``) answer them alike. The HTTP layer
(``kraken.registry.http`` and its handlers) owns every protocol rule
(validation, upload sessions, digests, error JSON); a source only stores and
fetches.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.web.resource import IResource
from zope.interface import Interface

from kraken.core import Digest


@attrs.frozen
class ManifestRecord:
    """A manifest as a repository knows it: the exact bytes live as a blob
    named ``digest``; the rest is what listing and content negotiation need."""

    digest: Digest
    media_type: str
    size: int
    artifact_type: str | None = None
    subject: Digest | None = None
    annotations: dict[str, str] | None = None

    def descriptor(self) -> dict[str, Any]:
        """An OCI descriptor of this manifest (as the referrers API lists it)."""
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": str(self.digest),
            "media_type": self.media_type,
            "size": self.size,
            "artifact_type": self.artifact_type,
            "subject": None if self.subject is None else str(self.subject),
            "annotations": self.annotations,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ManifestRecord:
        return cls(
            digest=Digest.parse(doc["digest"]),
            media_type=doc["media_type"],
            size=int(doc["size"]),
            artifact_type=doc.get("artifact_type"),
            subject=None if doc.get("subject") is None else Digest.parse(doc["subject"]),
            annotations=doc.get("annotations"),
        )


@attrs.frozen
class Page:
    """One page of a sorted listing; ``more`` says whether a next page exists."""

    items: tuple[str, ...]
    more: bool


class IRegistrySource(Interface):
    """Where the registry API gets and puts blobs and manifests. Every method
    is ``async``.

    Blobs are content addressed and shared by all repositories; the ``repo``
    passed with a blob operation is the namespace the request came through,
    which a source may use to choose where to store or fetch the blob.
    """

    async def stat_blob(repo: str, digest: Digest) -> int | None:
        """The blob's size, or None if it is not stored."""

    async def stat_blobs(repo: str, digests: list[Digest]) -> dict[Digest, int | None]:
        """The size of each of ``digests`` (None: not stored), asked in as
        few questions as the storage allows; a manifest's reference check
        calls it with up to a few hundred digests at once."""

    async def blob_resource(repo: str, digest: Digest) -> IResource | None:
        """A resource that serves the blob's bytes to GET and HEAD, honouring
        ``Range`` (206/416), or None if it is not stored. The API layer adds
        ``Docker-Content-Digest`` before rendering it."""

    async def commit_blob(repo: str, digest: Digest, path: str, size: int, upload: str = "") -> None:
        """Take the verified file at ``path`` (``size`` bytes, content
        ``digest``; the bytes of upload ``upload``) and store it. The caller
        deletes ``path`` afterwards."""

    async def read_blob(repo: str, digest: Digest, limit: int) -> bytes | None:
        """A small blob's bytes (a manifest), at most ``limit`` bytes, or None."""

    async def get_manifest(repo: str, digest: Digest) -> ManifestRecord | None:
        """The record of manifest ``digest`` in ``repo``, or None."""

    async def put_manifest(repo: str, record: ManifestRecord, body: bytes, tag: str | None) -> None:
        """Store ``body`` (already validated: its references exist) and record
        it in ``repo``; if ``tag`` is given, point the tag at it."""

    async def resolve_tag(repo: str, tag: str) -> Digest | None:
        """The digest ``repo:tag`` points at, or None."""

    async def list_tags(repo: str, n: int | None, last: str | None) -> Page | None:
        """Tags of ``repo`` sorted, after ``last``, at most ``n``; None if the
        repository is unknown."""

    async def list_repositories(n: int | None, last: str | None) -> Page:
        """Repository names sorted, after ``last``, at most ``n``."""

    async def referrers(repo: str, subject: Digest) -> list[ManifestRecord]:
        """Manifests in ``repo`` whose ``subject`` is ``subject``."""
