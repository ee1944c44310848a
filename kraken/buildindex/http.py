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
    PUT  /internal/remote/repositories/<repo>/tags/<tag>
                                                   body {"digest": "sha256:<hex>", "source": "<cluster>"}
                                                   -> 201 / 200 (from another cluster's build-index)
    GET  /internal/replication                     -> {"pending": [...], "stats": {..., "remotes": {name:
                                                   {pending, lag, failures, bytes_sent, ...}}}} (remotes)
    POST /internal/replication/repositories/<repo>/tags/<tag>
                                                   -> {"retriggered": n}: its queued replications due now

Every write, the internal duplicate route included, goes through the same
dependency check (``TagIndex``): the manifest and its references must be on
the origin, else 400 with ``missing``. Seam for mutual TLS: every internal
route is under ``INTERNAL_PREFIX``; a listener that requires a cluster
certificate for it wraps ``resource()`` there, before any handler runs.

The rules (which tags are accepted, what a miss asks, what a duplicate
stores) are ``kraken.buildindex.index.TagIndex``'s; this module validates
names, digests, pages and bodies, calls the index, and maps its exceptions
to statuses: ``Rejected`` is 400 ``{"error": "...", "missing":
["sha256:...", ...]}``, ``InvalidRecord`` 400, ``OriginCorrupt`` 502,
``OriginUnavailable`` 503. A tag ``GET`` (and ``HEAD``) that neither this
node nor its tag archive knows is 404.

Every error is JSON ``{"error": "..."}`` (plus ``missing`` on refusals),
produced by one ``handle_errors`` handler.

One ambiguity is inherent in the route shapes: ``GET /repositories/a/tags/tags``
is both "tag ``tags`` of ``a``" and "list the tags of ``a/tags``"; the tag
lookup wins.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from kraken.buildindex.config import MAX_DUPLICATE_DELAY
from kraken.buildindex.index import InvalidRecord, OriginCorrupt, OriginUnavailable, Rejected, TagIndex
from kraken.buildindex.remotes import Replicator
from kraken.core import Digest, DigestError
from kraken.net.server import HTTPError, json_error, json_response, read_body
from kraken.registry.names import is_valid_name, is_valid_tag
from kraken.registry.source import ManifestRecord

#: A tag PUT body is one digest; a record is small JSON.
MAX_TAG_BODY = 1024
MAX_LAST = 256
#: The longest cluster name a replicated tag may carry.
MAX_SOURCE = 200
#: Routes only other cluster members call (restricted to cluster certificates by the mutual-TLS listener).
INTERNAL_PREFIX = "/internal/"


def _http_error(e: BaseException | None) -> HTTPError | None:
    """The answer to one of the index's exceptions; None for any other."""
    if isinstance(e, Rejected):
        return HTTPError(400, e.message, missing=sorted(str(d) for d in e.missing))
    if isinstance(e, InvalidRecord):
        return HTTPError(400, str(e))
    if isinstance(e, OriginCorrupt):
        return HTTPError(502, str(e))
    if isinstance(e, OriginUnavailable):
        return HTTPError(503, str(e))
    return None


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


def _internal_doc(request: IRequest, repo: str, tag: str, shape: str) -> dict[str, Any]:
    """An internal tag route's checked names and JSON body (an object with a ``digest`` string)."""
    _check_repo(repo)
    _check_tag(tag)
    try:
        doc = json.loads(read_body(request, MAX_TAG_BODY))
    except ValueError:
        raise HTTPError(400, shape) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("digest"), str):
        raise HTTPError(400, shape)
    return doc


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


class BuildIndexHTTP:
    """The build-index's HTTP API: translates requests to calls on a ``TagIndex``."""

    app = Klein()
    log = Logger()

    def __init__(self, index: TagIndex, replicator: Replicator | None = None) -> None:
        self._index = index
        self._replicator = replicator

    def resource(self) -> Any:
        return self.app.resource()

    # -- errors ------------------------------------------------------------

    @app.handle_errors(Exception)
    def _error(self, request: IRequest, failure: Failure) -> bytes:
        translated = _http_error(failure.value)
        return json_error(request, failure if translated is None else Failure(translated), self.log)

    # -- routes ------------------------------------------------------------

    @app.route("/health", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        if not await self._index.healthy():
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
        previous = await self._index.put_tag(repo, tag, digest)
        return _text(request, 201 if previous is None else 200, str(digest))

    @app.route("/internal/duplicate/repositories/<path:repo>/tags/<tag>", methods=["PUT"])
    async def duplicate_tag(self, request: IRequest, repo: str, tag: str) -> bytes:
        doc = _internal_doc(request, repo, tag, "a duplicate is JSON {digest, delay}")
        delay = doc.get("delay", 0)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= MAX_DUPLICATE_DELAY:
            raise HTTPError(400, f"delay must be a number of seconds from 0 to {MAX_DUPLICATE_DELAY:.0f}")
        digest = _parse_digest(doc["digest"])
        previous = await self._index.duplicate(repo, tag, digest, delay)
        return _text(request, 201 if previous is None else 200, str(digest))

    @app.route("/internal/remote/repositories/<path:repo>/tags/<tag>", methods=["PUT"])
    async def remote_tag(self, request: IRequest, repo: str, tag: str) -> bytes:
        doc = _internal_doc(request, repo, tag, "a replicated tag is JSON {digest, source}")
        source = doc.get("source")
        if not isinstance(source, str) or not 0 < len(source) <= MAX_SOURCE or not source.isprintable():
            raise HTTPError(400, f"source must be a printable cluster name of 1 to {MAX_SOURCE} characters")
        previous = await self._index.replicate(repo, tag, _parse_digest(doc["digest"]), source)
        return _text(request, 201 if previous is None else 200, doc["digest"])

    @app.route("/internal/replication", methods=["GET"])
    async def replication(self, request: IRequest) -> bytes:
        if self._replicator is None:
            return json_response(request, 200, {"remotes": [], "pending": [], "stats": {}})
        pending = [
            {"remote": t.dest, "repository": t.repo, "tag": t.tag, "digest": str(t.digest), "attempts": t.attempts,
             "next_attempt": t.next_attempt, "last_error": t.last_error}
            for t in await self._replicator.pending()
        ]  # fmt: skip
        stats = await self._replication_stats()
        return json_response(request, 200, {"remotes": self._replicator.remotes, "pending": pending, "stats": stats})

    @app.route("/stats", methods=["GET"])
    async def stats(self, request: IRequest) -> bytes:
        """Counters for operators: replication to remote clusters (totals, and per remote its counters, queue
        depth ``pending`` and ``lag`` in seconds), as in ``GET /internal/replication``."""
        return json_response(request, 200, {"replication": await self._replication_stats()})

    async def _replication_stats(self) -> dict[str, Any]:
        if self._replicator is None:
            return {}
        stats = attrs.asdict(self._replicator.stats)
        stats["remotes"] = await self._replicator.report()
        return stats

    @app.route("/internal/replication/repositories/<path:repo>/tags/<tag>", methods=["POST"])
    async def retrigger(self, request: IRequest, repo: str, tag: str) -> bytes:
        _check_repo(repo)
        _check_tag(tag)
        n = 0 if self._replicator is None else await self._replicator.retrigger(repo, tag)
        return json_response(request, 200, {"retriggered": n})

    @app.route("/repositories/<path:repo>/tags/<tag>", methods=["GET"])
    async def get_tag(self, request: IRequest, repo: str, tag: str) -> bytes:
        _check_repo(repo)
        _check_tag(tag)
        digest = await self._index.get_tag(repo, tag)
        if digest is None:
            raise HTTPError(404, f"tag {repo}:{tag} unknown")
        return _text(request, 200, str(digest))

    @app.route("/repositories/<path:repo>/tags", methods=["GET"])
    async def list_tags(self, request: IRequest, repo: str) -> bytes:
        _check_repo(repo)
        n, last = _pagination(request, is_valid_tag)
        page = await self._index.list_tags(repo, n, last)
        if page is None:
            raise HTTPError(404, f"repository {repo} unknown")
        return json_response(request, 200, {"tags": list(page.items), "more": page.more})

    @app.route("/repositories", methods=["GET"])
    async def list_repositories(self, request: IRequest) -> bytes:
        n, last = _pagination(request, is_valid_name)
        page = await self._index.list_repositories(n, last)
        return json_response(request, 200, {"repositories": list(page.items), "more": page.more})

    @app.route("/repositories/<path:repo>/manifests/<digest>", methods=["PUT"])
    async def put_manifest(self, request: IRequest, repo: str, digest: str) -> bytes:
        _check_repo(repo)
        d = _parse_digest(digest)
        # A record holds a subset of its manifest (the annotations) and a few fields.
        record = _record_from_body(read_body(request, self._index.max_manifest_size + 4096))
        if record.digest != d:
            raise HTTPError(400, f"record digest {record.digest} does not match the URL's {d}")
        created = await self._index.put_manifest(repo, record)
        return json_response(request, 201 if created else 200, record.to_json())

    @app.route("/repositories/<path:repo>/manifests/<digest>", methods=["GET"])
    async def get_manifest(self, request: IRequest, repo: str, digest: str) -> bytes:
        _check_repo(repo)
        d = _parse_digest(digest)
        record = await self._index.get_manifest(repo, d)
        if record is None:
            raise HTTPError(404, f"manifest {d} unknown in {repo}")
        return json_response(request, 200, record.to_json())

    @app.route("/repositories/<path:repo>/referrers/<digest>", methods=["GET"])
    async def referrers(self, request: IRequest, repo: str, digest: str) -> bytes:
        _check_repo(repo)
        records = await self._index.referrers(repo, _parse_digest(digest))
        return json_response(request, 200, {"manifests": [r.to_json() for r in records]})
