"""The build-index, protocol-neutral: which tags it accepts, what it answers.

``TagIndex`` owns the build-index's rules; its HTTP app
(``kraken.buildindex.http``) only translates requests to calls on it and its
exceptions to statuses:

- ``put_tag``: a tag is accepted only if its manifest is on the origin,
  parses, and every blob it references is on the origin too; for a manifest
  list / OCI index, every child manifest and the child's own blobs. Otherwise
  it raises ``Rejected`` with the missing references. A manifest with more
  than ``max_references`` references (blobs and child manifests) is rejected
  before any is looked up; blobs are asked about in batches
  (``ClusterClient.stat_many``), never one request each at once
  (``_ReferenceCheck``). An accepted tag is queued for write-back to its
  namespace's tag archive in the same transaction that stores it (when the
  archive may be written) and, in that same transaction, its copies for the
  other nodes are queued in the outbox (``kraken.buildindex.duplicate``);
  neither the write-back nor the copies hold up the answer.
- ``duplicate``: what the internal duplicate route stores: a tag from another
  node, checked again with ``put_tag``'s rule (so no write route, internal or
  not, can point a tag at a digest that is not a manifest or whose references
  are missing), never duplicated further, with a write-back due
  after ``delay`` seconds that leaves a tag the archive already has alone.
- ``get_tag``: this node's tag, else (with an archive) the archive's answer,
  not cached (an upstream registry's tag may move; a shared bucket is
  written by other nodes); an archive failure is logged and answered as a
  miss (Kraken PR #631: clients that check a tag before pushing it must
  still push while storage is down).
- ``put_manifest`` / ``get_manifest`` / ``referrers``: manifest records; a
  record this node lacks is, with an archive, read from the origin and
  recorded, so a tag found only in the archive can be pulled.
- listings (``list_tags``, ``list_repositories``): from this node's database
  only, pages capped at ``max_page``.

The origin's failures raise ``OriginUnavailable`` (the client may retry), a
manifest whose content does not hash to its digest ``OriginCorrupt``.

- ``replicate``: what the internal remote route stores: a tag another
  cluster replicated here (``kraken.buildindex.remotes``), checked with
  ``put_tag``'s rule, marked with its source, copied to the other nodes and
  never queued to a remote (no loops between clusters).

A tag put by a client is queued, in the transaction that stores it, for
every remote whose ``repositories`` regex matches (``Replicator.copies``).
Readiness reads ``healthy()``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import attrs
from twisted.internet.defer import CancelledError, DeferredSemaphore
from twisted.logger import Logger

from kraken.buildindex.outbox import Copy
from kraken.buildindex.tags import Pending
from kraken.core import Digest
from kraken.net import ResponseTooLarge
from kraken.net.bounded import bounded_map, chunks
from kraken.registry.errors import RegistryError
from kraken.registry.manifests import MANIFEST_TYPES, ParsedManifest, parse_manifest
from kraken.registry.references import DEFAULT_MAX_REFERENCES
from kraken.registry.source import ManifestRecord, Page

if TYPE_CHECKING:
    from kraken.buildindex.archive import TagArchive
    from kraken.buildindex.duplicate import Duplicator
    from kraken.buildindex.remotes import Replicator
    from kraken.buildindex.tags import TagStore
    from kraken.buildindex.writeback import TagWriteBack
    from kraken.origin.client import ClusterClient

T = TypeVar("T")

#: Origin requests one tag check may have in flight at once.
CHECK_CONCURRENCY = 16
#: Blob digests per batch question to the origin.
CHECK_BATCH = 100
#: Child manifests are parsed (and their blobs checked) this many levels
#: below the tagged manifest; deeper ones are only checked for existence.
MAX_NESTING = 2


class Rejected(Exception):
    """A tag or record not accepted: what it needs is missing on the origin (``missing``), or its manifest is
    too large, invalid or has too many references."""

    def __init__(self, message: str, missing: list[Digest] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.missing = sorted(missing or [])


class InvalidRecord(Exception):
    """A manifest record that does not describe the origin's manifest."""


class OriginUnavailable(Exception):
    """The origin failed to answer (the caller may retry)."""


class OriginCorrupt(Exception):
    """The origin's content for a digest has another digest."""


@attrs.frozen
class _Ref:
    """A manifest to check: its digest and, if known, its media type."""

    digest: Digest
    media_type: str | None = None


def _references(parsed: ParsedManifest) -> tuple[list[Digest], list[_Ref]]:
    """The blobs (config, layers; foreign layers with ``urls`` excluded) and
    the child manifests of a parsed manifest. A child's descriptor media
    type is passed on to its parse only when it names a manifest type."""
    children = [_Ref(c.digest, c.media_type if c.media_type in MANIFEST_TYPES else None) for c in parsed.manifests]
    return parsed.required_blobs(), children


class _ReferenceCheck:
    """One tag's dependency check: which of a manifest's references the
    origin lacks. Each digest is asked about once; blobs go in batches of
    ``CHECK_BATCH`` (``ClusterClient.stat_many``), child manifests
    ``CHECK_CONCURRENCY`` at a time, and at most ``CHECK_CONCURRENCY``
    origin calls are in flight. A manifest with more than ``max_references``
    references is rejected before any of them is looked up."""

    def __init__(self, index: TagIndex, repo: str) -> None:
        self._index = index
        self._repo = repo
        self._seen: set[Digest] = set()
        self._sem = DeferredSemaphore(CHECK_CONCURRENCY)
        self.missing: set[Digest] = set()

    async def _limited(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        await self._sem.acquire()
        try:
            return await self._index.ask_origin(what, call)
        finally:
            self._sem.release()

    async def blobs(self, digests: list[Digest]) -> None:
        new = [d for d in dict.fromkeys(digests) if d not in self._seen]
        self._seen.update(new)
        origin = self._index.origin
        for chunk in chunks(new, CHECK_BATCH):
            sizes = await self._limited(
                f"stat {len(chunk)} blobs", partial(origin.stat_many, self._repo, chunk, concurrency=CHECK_CONCURRENCY)
            )
            self.missing.update(d for d in chunk if sizes.get(d) is None)

    async def manifest(self, ref: _Ref, depth: int) -> None:
        if ref.digest in self._seen:
            return
        self._seen.add(ref.digest)
        limit = self._index.max_manifest_size
        try:
            body = await self._limited(
                f"read manifest {ref.digest}", lambda: self._index.origin.read_small(self._repo, ref.digest, limit)
            )
        except ResponseTooLarge:
            raise Rejected(f"manifest {ref.digest} is larger than {limit} bytes") from None
        if body is None:
            self.missing.add(ref.digest)
            return
        try:
            parsed = parse_manifest(body, ref.media_type, ref.digest.algorithm)
        except RegistryError as e:
            raise Rejected(f"manifest {ref.digest} is invalid: {e.message}") from None
        if parsed.digest != ref.digest:
            raise OriginCorrupt(f"the origin's content for {ref.digest} has digest {parsed.digest}")
        blobs, children = _references(parsed)
        most = self._index.max_references
        if len(blobs) + len(children) > most:
            raise Rejected(
                f"manifest {ref.digest} has {len(blobs) + len(children)} references (blobs and manifests); "
                f"at most {most} are accepted"
            )
        if depth + 1 > MAX_NESTING:  # deeper manifests are only checked for existence
            blobs = blobs + [c.digest for c in children]
            children = []
        await self.blobs(blobs)
        await bounded_map(children, CHECK_CONCURRENCY, lambda c: self.manifest(c, depth + 1))


class TagIndex:
    """See the module docstring. ``archive`` (the tags in storage backends),
    ``writeback`` (its durable write-back loop) and ``duplicator`` (the other
    nodes) are optional."""

    log = Logger()

    def __init__(
        self,
        tags: TagStore,
        origin: ClusterClient,
        *,
        max_manifest_size: int,
        max_page: int,
        max_references: int = DEFAULT_MAX_REFERENCES,
        archive: TagArchive | None = None,
        writeback: TagWriteBack | None = None,
        duplicator: Duplicator | None = None,
        replicator: Replicator | None = None,
    ) -> None:
        self.origin = origin
        self.max_manifest_size = max_manifest_size
        self.max_references = max_references
        self._tags = tags
        self._archive = archive
        self._writeback = writeback
        self._duplicator = duplicator
        self._replicator = replicator
        self._max_page = max_page

    async def ask_origin(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Call the origin. Its failures raise ``OriginUnavailable``, except
        cancellation and ``ResponseTooLarge``, which callers handle."""
        try:
            return await call()
        except (CancelledError, ResponseTooLarge):
            raise
        except Exception as e:
            self.log.warn("origin {what} failed: {error}", what=what, error=str(e))
            raise OriginUnavailable(f"origin unavailable ({what}): {e}") from None

    async def healthy(self) -> bool:
        """Whether the tag database answers."""
        return await self._tags.healthy()

    # -- tags --

    async def put_tag(self, repo: str, tag: str, digest: Digest) -> Digest | None:
        """Point ``repo:tag`` at ``digest`` once its manifest and every reference are on the origin (else
        ``Rejected``); returns the digest it pointed at before (None: a new tag)."""
        await self._check_closure(repo, tag, digest)
        copies = [] if self._replicator is None else self._replicator.copies(repo)
        previous = await self._store_tag(repo, tag, digest, Pending(overwrite=True), copies, source="")
        self.log.info(
            "tag {namespace}:{tag} -> {digest}", namespace=repo, tag=tag, digest=str(digest),
            previous=None if previous is None else str(previous), remotes=[c.dest for c in copies],
        )  # fmt: skip
        if copies and self._replicator is not None:
            self._replicator.kick()
        return previous

    async def replicate(self, repo: str, tag: str, digest: Digest, source: str) -> Digest | None:
        """Store a tag replicated from the remote cluster ``source``, checked with ``put_tag``'s rule
        against this cluster's origin, marked as received from ``source``, written back and copied to
        this cluster's other nodes like a client's tag, but never queued to a remote (so no tag can
        loop between clusters). Returns the digest it pointed at before."""
        await self._check_closure(repo, tag, digest)
        previous = await self._store_tag(repo, tag, digest, Pending(overwrite=True), source=source)
        self.log.info(
            "tag {namespace}:{tag} -> {digest} (replicated from {source})", namespace=repo, tag=tag,
            digest=str(digest), source=source, previous=None if previous is None else str(previous),
        )  # fmt: skip
        return previous

    async def _check_closure(self, repo: str, tag: str, digest: Digest) -> None:
        """``Rejected`` unless ``digest`` is a manifest on the origin whose every reference is there too."""
        check = _ReferenceCheck(self, repo)
        await check.manifest(_Ref(digest), 0)
        if check.missing:
            missing = sorted(check.missing)
            self.log.info(
                "tag {namespace}:{tag} -> {digest} refused: {count} missing",
                namespace=repo, tag=tag, digest=str(digest), count=len(missing), missing=[str(d) for d in missing],
            )  # fmt: skip
            what = "manifest" if digest in check.missing else "references"
            raise Rejected(f"cannot tag {repo}:{tag}: {what} missing on the origin", missing)

    async def duplicate(self, repo: str, tag: str, digest: Digest, delay: float) -> Digest | None:
        """Store a tag another node accepted, checked again here with ``put_tag``'s rule (an internal route is
        no way around it); its write-back is due after ``delay`` seconds and leaves a tag the archive has alone.
        Returns the digest it pointed at before."""
        await self._check_closure(repo, tag, digest)
        previous = await self._store_tag(repo, tag, digest, Pending(overwrite=False, delay=float(delay)))
        self.log.info(
            "tag {namespace}:{tag} -> {digest} (duplicate)", namespace=repo, tag=tag, digest=str(digest),
            previous=None if previous is None else str(previous), delay=delay,
        )  # fmt: skip
        return previous

    async def _store_tag(
        self,
        repo: str,
        tag: str,
        digest: Digest,
        pending: Pending,
        remotes: Sequence[Copy] = (),
        *,
        source: str | None = None,
    ) -> Digest | None:
        """Store the tag, queued for write-back if its namespace's archive entry may be written, with
        its copies for the remotes and (unless it is itself a duplicate: ``source`` None) for the other
        nodes queued in the outbox, all in one transaction."""
        writable = self._archive is not None and self._archive.writable(repo)
        copies = list(remotes)
        if source is not None and self._duplicator is not None:
            copies += self._duplicator.copies()
        previous = await self._tags.put_tag(
            repo, tag, digest, pending=pending if writable else None, copies=copies, source=source
        )
        if writable and self._writeback is not None:
            self._writeback.kick()
        if source is not None and self._duplicator is not None:
            self._duplicator.kick()
        return previous

    async def get_tag(self, repo: str, tag: str) -> Digest | None:
        """The tag's digest here, else the archive's; None if neither has it."""
        digest = await self._tags.get_tag(repo, tag)
        if digest is None and self._archive is not None:
            digest = await self._archived_tag(self._archive, repo, tag)
        return digest

    async def _archived_tag(self, archive: TagArchive, repo: str, tag: str) -> Digest | None:
        """The archive's digest for the tag; None on a miss or a failure (logged)."""
        try:
            digest = await archive.get(repo, tag)
        except CancelledError:
            raise
        except Exception as e:
            self.log.warn(
                "backend lookup of tag {namespace}:{tag} failed, answering 404: {error}",
                namespace=repo, tag=tag, error=f"{type(e).__name__}: {e}",
            )  # fmt: skip
            return None
        if digest is not None:
            self.log.debug(
                "tag {namespace}:{tag} -> {digest} from the backend", namespace=repo, tag=tag, digest=str(digest)
            )
        return digest

    # -- listings --

    async def list_tags(self, repo: str, n: int | None, last: str | None) -> Page | None:
        """A page of ``repo``'s tags after ``last`` (at most ``n``, capped); None if the repository is unknown."""
        return await self._tags.list_tags(repo, self._cap(n), last)

    async def list_repositories(self, n: int | None, last: str | None) -> Page:
        return await self._tags.list_repositories(self._cap(n), last)

    async def referrers(self, repo: str, subject: Digest) -> list[ManifestRecord]:
        return await self._tags.referrers(repo, subject)

    def _cap(self, n: int | None) -> int:
        return self._max_page if n is None else min(n, self._max_page)

    # -- manifest records --

    async def put_manifest(self, repo: str, record: ManifestRecord) -> bool:
        """Record a manifest that is on the origin with the record's size; True if it is new here."""
        d = record.digest
        size = await self.ask_origin(f"stat {d}", lambda: self.origin.stat(repo, d))
        if size is None:
            raise Rejected(f"manifest {d} missing on the origin", [d])
        if size != record.size:
            raise InvalidRecord(f"record size {record.size} but the origin has {size} bytes for {d}")
        existed = await self._tags.get_manifest(repo, d) is not None
        await self._tags.put_manifest(repo, record)
        self.log.info(
            "manifest {digest} recorded in {namespace}", digest=str(d), namespace=repo, media_type=record.media_type
        )
        return not existed

    async def get_manifest(self, repo: str, digest: Digest) -> ManifestRecord | None:
        """The record here, else (with an archive) the origin's manifest, recorded now; None if neither."""
        record = await self._tags.get_manifest(repo, digest)
        if record is None and self._archive is not None:
            record = await self._record_from_origin(repo, digest)
        return record

    async def _record_from_origin(self, repo: str, digest: Digest) -> ManifestRecord | None:
        """The record of a manifest on the origin but not recorded here (a
        tag found in the archive points at it), recorded now; None if the
        origin lacks it or it is not a manifest."""
        limit = self.max_manifest_size
        try:
            body = await self.ask_origin(f"read manifest {digest}", lambda: self.origin.read_small(repo, digest, limit))
        except ResponseTooLarge:
            self.log.warn(
                "manifest {digest} of {namespace} is larger than {bytes} bytes", digest=str(digest), namespace=repo,
                bytes=limit,
            )  # fmt: skip
            return None
        if body is None:
            return None
        try:
            parsed = parse_manifest(body, None, digest.algorithm)
        except RegistryError as e:
            self.log.info(
                "blob {digest} of {namespace} is not a manifest: {error}", digest=str(digest), namespace=repo,
                error=e.message,
            )  # fmt: skip
            return None
        if parsed.digest != digest:
            raise OriginCorrupt(f"the origin's content for {digest} has digest {parsed.digest}")
        record = parsed.record()
        await self._tags.put_manifest(repo, record)
        self.log.info(
            "manifest {digest} recorded in {namespace} from the origin", digest=str(digest), namespace=repo,
            media_type=record.media_type,
        )  # fmt: skip
        return record
