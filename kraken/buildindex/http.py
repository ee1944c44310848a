"""The build-index HTTP API (Klein).

Routes (repository names contain ``/``; tags and digests never do)::

    GET  /health                                   "OK\\n"
    PUT  /repositories/<repo>/tags/<tag>           body "sha256:<hex>"  -> 201 (new) / 200 (moved)
    GET  /repositories/<repo>/tags/<tag>           -> "sha256:<hex>" / 404
    GET  /repositories/<repo>/tags?n=&last=        -> {"tags": [...], "more": bool} / 404
    GET  /repositories?n=&last=                    -> {"repositories": [...], "more": bool}
    PUT  /repositories/<repo>/manifests/<digest>   body ManifestRecord JSON -> 201 / 200
    GET  /repositories/<repo>/manifests/<digest>   -> ManifestRecord JSON / 404
    GET  /repositories/<repo>/referrers/<digest>   -> {"manifests": [ManifestRecord JSON, ...]}
    PUT  /internal/duplicate/repositories/<repo>/tags/<tag>
                                                   body {"digest": "sha256:<hex>", "delay": seconds}
                                                   -> 201 / 200 (from another build-index node)

A tag is accepted only if its manifest is on the origin, parses, and every
blob it references is on the origin too; for a manifest list / OCI index,
every child manifest and the child's own blobs. Otherwise the answer is 400
``{"error": "...", "missing": ["sha256:...", ...]}``. A manifest with more
than ``max_references`` references (blobs and child manifests) is refused
with 400 before any is looked up; the blobs are asked about in batches
(``ClusterClient.stat_many``), never one request each at once.

With ``backends`` configured (``kraken.buildindex.backends``):

- an accepted tag is queued for write-back to its namespace's backend in
  the same transaction that stores it (``kraken.buildindex.writeback``) and
  then duplicated to the other nodes (``kraken.buildindex.duplicate``);
  neither holds up the answer;
- ``GET`` (and ``HEAD``) of a tag this node does not have asks the
  namespace's backend. The answer is not cached here: an upstream registry's
  tag may move, and a shared bucket is written by other nodes. A backend
  failure answers 404, as a miss (Kraken PR #631: clients that check a tag
  before pushing it must still push while storage is down), and is logged;
- ``GET`` of a manifest record this node lacks reads the manifest from the
  origin (which fetches it from its own backend on a miss), records it and
  answers it: so a tag found only in a backend can be pulled through the
  proxy, which asks for the record next. Records are content-addressed, so
  keeping them is safe.

Listings (tags, repositories, referrers) answer from this node's database
only.

A duplicate (the internal route) is stored without checking its manifest,
is never duplicated again, and queues a write-back due after ``delay``
seconds that leaves a tag the backend already has alone.

Every error is JSON ``{"error": "..."}`` (plus ``missing`` on refusals),
produced by one ``handle_errors`` handler.

One ambiguity is inherent in the route shapes: ``GET /repositories/a/tags/tags``
is both "tag ``tags`` of ``a``" and "list the tags of ``a/tags``"; the tag
lookup wins.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from kraken.buildindex.config import MAX_DUPLICATE_DELAY
from kraken.buildindex.tags import Pending
from kraken.core import Digest, DigestError
from kraken.net import ResponseTooLarge
from kraken.net.bounded import bounded_map, chunks
from kraken.net.server import HTTPError, json_error, json_response, read_body
from kraken.registry.errors import RegistryError
from kraken.registry.manifests import MANIFEST_TYPES, ParsedManifest, parse_manifest
from kraken.registry.names import is_valid_name, is_valid_tag
from kraken.registry.references import DEFAULT_MAX_REFERENCES
from kraken.registry.source import ManifestRecord

if TYPE_CHECKING:
    from kraken.buildindex.backends import TagBackends
    from kraken.buildindex.duplicate import Duplicator
    from kraken.buildindex.tags import TagStore
    from kraken.buildindex.writeback import TagWriteBack
    from kraken.origin.client import ClusterClient

T = TypeVar("T")

#: A tag PUT body is one digest; a record is small JSON.
MAX_TAG_BODY = 1024
#: Origin requests one tag check may have in flight at once.
CHECK_CONCURRENCY = 16
#: Blob digests per batch question to the origin.
CHECK_BATCH = 100
#: Child manifests are parsed (and their blobs checked) this many levels
#: below the tagged manifest; deeper ones are only checked for existence.
MAX_NESTING = 2
MAX_LAST = 256


class Refused(HTTPError):
    """A tag or record refused because the origin lacks what it needs."""

    def __init__(self, message: str, missing: list[Digest] | None = None) -> None:
        super().__init__(400, message, missing=sorted(str(d) for d in (missing or [])))


@attrs.frozen
class _Ref:
    """A manifest to check: its digest and, if known, its media type."""

    digest: Digest
    media_type: str | None = None


def _text(request: IRequest, status: int, text: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return text.encode("utf-8")


def _check_repo(repo: str) -> str:
    if not is_valid_name(repo):
        raise HTTPError(400, f"invalid repository name {repo!r}")
    return repo


def _check_tag(tag: str) -> str:
    if not is_valid_tag(tag):
        raise HTTPError(400, f"invalid tag {tag!r}")
    return tag


def _parse_digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except DigestError as e:
        raise HTTPError(400, f"invalid digest: {e}") from None


def _arg(request: IRequest, name: bytes) -> str | None:
    values = (request.args or {}).get(name)
    if not values:
        return None
    if len(values) > 1:
        raise HTTPError(400, f"{name.decode()} given more than once")
    try:
        text: str = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, f"{name.decode()} is not UTF-8") from None
    return text


def _pagination(request: IRequest, valid_last: Callable[[str], bool]) -> tuple[int | None, str | None]:
    n_text = _arg(request, b"n")
    n: int | None = None
    if n_text is not None:
        if not (n_text.isascii() and n_text.isdigit()) or len(n_text) > 9:
            raise HTTPError(400, f"n must be a non-negative integer, not {n_text[:20]!r}")
        n = int(n_text)
    last = _arg(request, b"last")
    if last == "":
        last = None
    if last is not None and (len(last) > MAX_LAST or not valid_last(last)):
        raise HTTPError(400, f"invalid last {last[:MAX_LAST]!r}")
    return n, last


def _record_from_body(body: bytes) -> ManifestRecord:
    try:
        doc = json.loads(body)
    except ValueError:
        raise HTTPError(400, "manifest record is not JSON") from None
    if not isinstance(doc, dict):
        raise HTTPError(400, "manifest record must be a JSON object")
    problems = []
    if not isinstance(doc.get("digest"), str):
        problems.append("digest")
    if not isinstance(doc.get("media_type"), str) or not doc["media_type"]:
        problems.append("media_type")
    size = doc.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        problems.append("size")
    if doc.get("artifact_type") is not None and not isinstance(doc["artifact_type"], str):
        problems.append("artifact_type")
    if doc.get("subject") is not None and not isinstance(doc["subject"], str):
        problems.append("subject")
    annotations = doc.get("annotations")
    if annotations is not None and not (
        isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values())
    ):
        problems.append("annotations")
    unknown = set(doc) - {"digest", "media_type", "size", "artifact_type", "subject", "annotations"}
    problems.extend(sorted(unknown))
    if problems:
        raise HTTPError(400, f"invalid manifest record: bad or unknown field(s) {', '.join(problems)}")
    try:
        return ManifestRecord.from_json(doc)
    except DigestError as e:
        raise HTTPError(400, f"invalid manifest record: {e}") from None


def _references(parsed: ParsedManifest) -> tuple[list[Digest], list[_Ref]]:
    """The blobs (config, layers; foreign layers with ``urls`` excluded) and
    the child manifests of a parsed manifest. A child's descriptor media
    type is passed on to its parse only when it names a manifest type."""
    children = [_Ref(c.digest, c.media_type if c.media_type in MANIFEST_TYPES else None) for c in parsed.manifests]
    return parsed.required_blobs(), children


class _Check:
    """One tag's dependency check: which of a manifest's references the
    origin lacks. Each digest is asked about once; blobs go in batches of
    ``CHECK_BATCH`` (``ClusterClient.stat_many``), child manifests
    ``CHECK_CONCURRENCY`` at a time, and at most ``CHECK_CONCURRENCY``
    origin calls are in flight. A manifest with more than ``max_references``
    references is refused before any of them is looked up."""

    def __init__(self, http: BuildIndexHTTP, repo: str) -> None:
        self._http = http
        self._repo = repo
        self._seen: set[Digest] = set()
        self._sem = DeferredSemaphore(CHECK_CONCURRENCY)
        self.missing: set[Digest] = set()

    async def _limited(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        await self._sem.acquire()
        try:
            return await self._http._ask_origin(what, call)
        finally:
            self._sem.release()

    async def blobs(self, digests: list[Digest]) -> None:
        new = [d for d in dict.fromkeys(digests) if d not in self._seen]
        self._seen.update(new)
        origin = self._http._origin
        for chunk in chunks(new, CHECK_BATCH):
            sizes = await self._limited(
                f"stat {len(chunk)} blobs", partial(origin.stat_many, self._repo, chunk, concurrency=CHECK_CONCURRENCY)
            )
            self.missing.update(d for d in chunk if sizes.get(d) is None)

    async def manifest(self, ref: _Ref, depth: int) -> None:
        if ref.digest in self._seen:
            return
        self._seen.add(ref.digest)
        limit = self._http._max_manifest_size
        try:
            body = await self._limited(
                f"read manifest {ref.digest}", lambda: self._http._origin.read_small(self._repo, ref.digest, limit)
            )
        except ResponseTooLarge:
            raise Refused(f"manifest {ref.digest} is larger than {limit} bytes") from None
        if body is None:
            self.missing.add(ref.digest)
            return
        try:
            parsed = parse_manifest(body, ref.media_type)
        except RegistryError as e:
            raise Refused(f"manifest {ref.digest} is invalid: {e.message}") from None
        if parsed.digest != ref.digest:
            raise HTTPError(502, f"the origin's content for {ref.digest} has digest {parsed.digest}")
        blobs, children = _references(parsed)
        most = self._http._max_references
        if len(blobs) + len(children) > most:
            raise Refused(
                f"manifest {ref.digest} has {len(blobs) + len(children)} references (blobs and manifests); "
                f"at most {most} are accepted"
            )
        if depth + 1 > MAX_NESTING:  # deeper manifests are only checked for existence
            blobs = blobs + [c.digest for c in children]
            children = []
        await self.blobs(blobs)
        await bounded_map(children, CHECK_CONCURRENCY, lambda c: self.manifest(c, depth + 1))


class BuildIndexHTTP:
    app = Klein()
    log = Logger()

    def __init__(
        self,
        tags: TagStore,
        origin: ClusterClient,
        *,
        clock: IReactorTime,
        max_manifest_size: int,
        max_page: int,
        max_references: int = DEFAULT_MAX_REFERENCES,
        backends: TagBackends | None = None,
        writeback: TagWriteBack | None = None,
        duplicator: Duplicator | None = None,
    ) -> None:
        self._tags = tags
        self._backends = backends
        self._writeback = writeback
        self._duplicator = duplicator
        self._origin = origin
        self._clock = clock
        self._max_manifest_size = max_manifest_size
        self._max_page = max_page
        self._max_references = max_references

    def resource(self) -> Any:
        return self.app.resource()

    # -- errors ------------------------------------------------------------

    @app.handle_errors(Exception)
    def _error(self, request: IRequest, failure: Failure) -> bytes:
        return json_error(request, failure, self.log)

    async def _ask_origin(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Call the origin. Its failures become a 503 (the client may retry),
        except cancellation and ``ResponseTooLarge``, which callers handle."""
        try:
            return await call()
        except (CancelledError, ResponseTooLarge):
            raise
        except Exception as e:
            self.log.warn("origin {what} failed: {error}", what=what, error=str(e))
            raise HTTPError(503, f"origin unavailable ({what}): {e}") from None

    # -- routes ------------------------------------------------------------

    @app.route("/health", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        if not await self._tags.healthy():
            return _text(request, 503, "tag database unavailable\n")
        return _text(request, 200, "OK\n")

    @app.route("/repositories/<path:repo>/tags/<tag>", methods=["PUT"])
    async def put_tag(self, request: IRequest, repo: str, tag: str) -> bytes:
        _check_repo(repo)
        _check_tag(tag)
        body = read_body(request, MAX_TAG_BODY)
        try:
            text = body.decode("ascii").strip()
        except UnicodeDecodeError:
            raise HTTPError(400, "body must be a digest") from None
        digest = _parse_digest(text)
        check = _Check(self, repo)
        await check.manifest(_Ref(digest), 0)
        if check.missing:
            missing = sorted(check.missing)
            self.log.info(
                "tag {namespace}:{tag} -> {digest} refused: {count} missing",
                namespace=repo, tag=tag, digest=str(digest), count=len(missing), missing=[str(d) for d in missing],
            )  # fmt: skip
            what = "manifest" if digest in check.missing else "references"
            raise Refused(f"cannot tag {repo}:{tag}: {what} missing on the origin", missing)
        previous = await self._store_tag(repo, tag, digest, Pending(overwrite=True))
        self.log.info(
            "tag {namespace}:{tag} -> {digest}", namespace=repo, tag=tag, digest=str(digest),
            previous=None if previous is None else str(previous),
        )  # fmt: skip
        if self._duplicator is not None:
            self._duplicator.duplicate(repo, tag, digest)
        return _text(request, 201 if previous is None else 200, str(digest))

    async def _store_tag(self, repo: str, tag: str, digest: Digest, pending: Pending) -> Digest | None:
        """Store the tag, queued for write-back if its namespace has a writable backend."""
        writable = self._backends is not None and self._backends.writable(repo)
        previous = await self._tags.put_tag(repo, tag, digest, pending=pending if writable else None)
        if writable and self._writeback is not None:
            self._writeback.kick()
        return previous

    @app.route("/internal/duplicate/repositories/<path:repo>/tags/<tag>", methods=["PUT"])
    async def duplicate_tag(self, request: IRequest, repo: str, tag: str) -> bytes:
        _check_repo(repo)
        _check_tag(tag)
        try:
            doc = json.loads(read_body(request, MAX_TAG_BODY))
        except ValueError:
            raise HTTPError(400, "a duplicate is JSON {digest, delay}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("digest"), str):
            raise HTTPError(400, "a duplicate is JSON {digest, delay}")
        delay = doc.get("delay", 0)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= MAX_DUPLICATE_DELAY:
            raise HTTPError(400, f"delay must be a number of seconds from 0 to {MAX_DUPLICATE_DELAY:.0f}")
        digest = _parse_digest(doc["digest"])
        previous = await self._store_tag(repo, tag, digest, Pending(overwrite=False, delay=float(delay)))
        self.log.info(
            "tag {namespace}:{tag} -> {digest} (duplicate)", namespace=repo, tag=tag, digest=str(digest),
            previous=None if previous is None else str(previous), delay=delay,
        )  # fmt: skip
        return _text(request, 201 if previous is None else 200, str(digest))

    @app.route("/repositories/<path:repo>/tags/<tag>", methods=["GET"])
    async def get_tag(self, request: IRequest, repo: str, tag: str) -> bytes:
        _check_repo(repo)
        _check_tag(tag)
        digest = await self._tags.get_tag(repo, tag)
        if digest is None and self._backends is not None:
            digest = await self._backend_tag(repo, tag)
        if digest is None:
            raise HTTPError(404, f"tag {repo}:{tag} unknown")
        return _text(request, 200, str(digest))

    async def _backend_tag(self, repo: str, tag: str) -> Digest | None:
        """The namespace backend's digest for the tag; None on a miss or a failure (logged)."""
        assert self._backends is not None
        try:
            digest = await self._backends.get(repo, tag)
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

    @app.route("/repositories/<path:repo>/tags", methods=["GET"])
    async def list_tags(self, request: IRequest, repo: str) -> bytes:
        _check_repo(repo)
        n, last = _pagination(request, is_valid_tag)
        page = await self._tags.list_tags(repo, self._cap(n), last)
        if page is None:
            raise HTTPError(404, f"repository {repo} unknown")
        return json_response(request, 200, {"tags": list(page.items), "more": page.more})

    @app.route("/repositories", methods=["GET"])
    async def list_repositories(self, request: IRequest) -> bytes:
        n, last = _pagination(request, is_valid_name)
        page = await self._tags.list_repositories(self._cap(n), last)
        return json_response(request, 200, {"repositories": list(page.items), "more": page.more})

    @app.route("/repositories/<path:repo>/manifests/<digest>", methods=["PUT"])
    async def put_manifest(self, request: IRequest, repo: str, digest: str) -> bytes:
        _check_repo(repo)
        d = _parse_digest(digest)
        # A record holds a subset of its manifest (the annotations) and a few fields.
        record = _record_from_body(read_body(request, self._max_manifest_size + 4096))
        if record.digest != d:
            raise HTTPError(400, f"record digest {record.digest} does not match the URL's {d}")
        size = await self._ask_origin(f"stat {d}", lambda: self._origin.stat(repo, d))
        if size is None:
            raise Refused(f"manifest {d} missing on the origin", [d])
        if size != record.size:
            raise HTTPError(400, f"record size {record.size} but the origin has {size} bytes for {d}")
        existed = await self._tags.get_manifest(repo, d) is not None
        await self._tags.put_manifest(repo, record)
        self.log.info(
            "manifest {digest} recorded in {namespace}", digest=str(d), namespace=repo, media_type=record.media_type
        )
        return json_response(request, 200 if existed else 201, record.to_json())

    @app.route("/repositories/<path:repo>/manifests/<digest>", methods=["GET"])
    async def get_manifest(self, request: IRequest, repo: str, digest: str) -> bytes:
        _check_repo(repo)
        d = _parse_digest(digest)
        record = await self._tags.get_manifest(repo, d)
        if record is None and self._backends is not None:
            record = await self._record_from_origin(repo, d)
        if record is None:
            raise HTTPError(404, f"manifest {d} unknown in {repo}")
        return json_response(request, 200, record.to_json())

    async def _record_from_origin(self, repo: str, digest: Digest) -> ManifestRecord | None:
        """The record of a manifest on the origin but not recorded here (a
        tag found in a backend points at it), recorded now; None if the origin
        lacks it or it is not a manifest."""
        limit = self._max_manifest_size
        try:
            body = await self._ask_origin(
                f"read manifest {digest}", lambda: self._origin.read_small(repo, digest, limit)
            )
        except ResponseTooLarge:
            self.log.warn(
                "manifest {digest} of {namespace} is larger than {bytes} bytes",
                digest=str(digest),
                namespace=repo,
                bytes=limit,
            )
            return None
        if body is None:
            return None
        try:
            parsed = parse_manifest(body, None)
        except RegistryError as e:
            self.log.info(
                "blob {digest} of {namespace} is not a manifest: {error}",
                digest=str(digest),
                namespace=repo,
                error=e.message,
            )
            return None
        if parsed.digest != digest:
            raise HTTPError(502, f"the origin's content for {digest} has digest {parsed.digest}")
        record = parsed.record()
        await self._tags.put_manifest(repo, record)
        self.log.info(
            "manifest {digest} recorded in {namespace} from the origin",
            digest=str(digest),
            namespace=repo,
            media_type=record.media_type,
        )
        return record

    @app.route("/repositories/<path:repo>/referrers/<digest>", methods=["GET"])
    async def referrers(self, request: IRequest, repo: str, digest: str) -> bytes:
        _check_repo(repo)
        d = _parse_digest(digest)
        records = await self._tags.referrers(repo, d)
        return json_response(request, 200, {"manifests": [r.to_json() for r in records]})

    def _cap(self, n: int | None) -> int:
        return self._max_page if n is None else min(n, self._max_page)
