"""The origin's blob server (Kraken's ``origin/blobserver``), as a Klein app.

Routes (``<ns>`` is a repository name and may contain slashes, checked with
the registry's grammar; digests are ``sha256:<64 hex>`` or ``sha512:<128 hex>``; anything else is
400)::

    GET   /health
    GET   /stats                                         -> the P2P scheduler's counters (JSON)
    GET   /blobs/<digest>/locations                      -> Origin-Locations: host:port,host:port
    GET   /blobs/<digest>/peers                          -> {"peers": [PeerInfo JSON...]}
    POST  /blobs/stat   {"digests": [...]}               -> {"held": {digest: size}, "locations": {...},
                                                             "may_fetch": bool}
    GET   /namespace/<ns>/blobs/<digest>/peers           (the same; blobs are content-addressed)
    POST  /namespace/<ns>/blobs/<digest>/uploads         -> 200, Location: <uid>; 409 if stored
    PATCH /namespace/<ns>/blobs/<digest>/uploads/<uid>   Content-Range: <start>-<end> (end exclusive)
    PUT   /namespace/<ns>/blobs/<digest>/uploads/<uid>   -> 201; 400 on a digest mismatch
    POST  /namespace/<ns>/staged-uploads                 -> 200, Location: <uid> (digest not known yet)
    PATCH /namespace/<ns>/staged-uploads/<uid>           Content-Range: <start>- (the body's length)
                                                         -> 204, Kraken-Upload-Size: <bytes>
    DELETE /namespace/<ns>/staged-uploads/<uid>          -> 204
    PUT   /namespace/<ns>/blobs/<digest>/staged-uploads/<uid>
                                                         -> 201; 400 on a digest mismatch; 421 (upload
                                                            deleted) if this origin is not in the placement
    GET   /namespace/<ns>/blobs/<digest>                 (and HEAD; Range supported)
    GET   /namespace/<ns>/blobs/<digest>/metainfo        -> MetaInfo JSON

Errors are plain text (``<message>\\n``) with the status, mapped in one place
(``_error``); a 409 during an upload means "already stored", which clients
treat as success.

A full store (ENOSPC or EDQUOT anywhere: an upload's chunk, its commit, a
fetch from a backend) answers **507** ``no space left on device: ...``, and
the upload it struck is deleted (the client starts again, on this origin or
another). A PATCH body the spool cannot write is answered at once, before
the body has all arrived (``body_refused``), and the connection is closed.
Nothing about it is remembered: the next request tries the disk again.

This module only translates: what happens to a blob (commit, write-back,
replication, fetch on miss) is ``kraken.origin.node.OriginNode``'s business.
Every commit, and every "already exists" answer, makes sure the blob is
queued for write-back and answers only once it is.

A *staged* upload is one whose digest is not known when it starts: the proxy streams a client's upload to
one origin as it arrives (``kraken.proxy.stage``) and names the digest at the end. Its bytes are hashed as they
come, like any upload's; the commit stores it (and copies it to the other replicas) only if this origin is in
the blob's placement, and answers 421 otherwise, so that the proxy uploads the blob to its locations instead.

``peers`` lists this origin's own P2P address (``complete`` and ``origin``
true) when it has one and holds the blob, and nothing otherwise: the
tracker asks it which origins can seed a blob.

In a cluster, ``locations`` answers the blob's healthy replicas
(``kraken.origin.cluster``), and a commit of a client's upload is copied to
the other replicas before the 201. An upload whose requests carry
``Kraken-Replica: k`` is such a copy: its write-back is delayed and it is
not copied on. A GET/HEAD with ``Kraken-Local`` is answered from the store
alone (another origin repairing itself must not start a fetch here).

``POST /blobs/stat`` answers, for up to ``MAX_STAT_BATCH`` digests at once,
which of them this origin's store holds (``held``: their sizes), where the
others live in the ring (``locations``: "host:port" best first, as
``/blobs/<digest>/locations``), and whether a blob absent here could still be
fetched from outside the ring (``may_fetch``: this origin has storage
backends to fetch from; a blob that no origin of its placement holds cannot
come from the replicas). It never starts a fetch: it is the cheap first
question of a manifest's reference check (``ClusterClient.stat_many``), which
asks the blob's placement next and only then, for what may still come from a
backend, a HEAD each.

Fetch on miss (only with a ``fetcher``, which the tap builds when backends
or a cluster are configured): GET/HEAD of a blob, its metainfo and
``/namespace/<ns>/blobs/<digest>/peers`` for a blob the store lacks ask the
fetcher (``kraken.origin.fetch``), and answer **202** (empty body,
``Retry-After: 1``) while it fetches the blob from the namespace's backend,
404 when that backend has none (or no backend serves the namespace) and 503
when the backend failed lately. ``/blobs/<digest>/peers`` names no
namespace, so it cannot start a fetch: it answers 202 while one runs and
as before otherwise. Without a fetcher a missing blob is 404 (``peers``:
an empty list).

A GET of a blob with ``Kraken-Stream: 1`` (an agent's, ``kraken.agent.fromorigin``)
asks for the blob while this origin fetches it: if a fetch runs (or starts now)
whose backend tells its progress, the answer is 200 with the blob's length,
streamed as it arrives (``kraken.registry.streaming``: ``Range`` too), its last
byte held until the commit proved the digest; a fetch that fails aborts the
connection. Otherwise (the blob is held: get it peer to peer; or a fetch whose
progress is unknown) **204** with no body, at once; 404, 503 and 507 as ever.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Request
from twisted.web.static import File
from werkzeug.exceptions import HTTPException

from kraken.backends import BackendUnavailable, BlobNotFound
from kraken.core import Digest, DigestError
from kraken.core.peer import PeerInfo
from kraken.files import is_out_of_space
from kraken.net.server import HTTPError, Refusal
from kraken.origin.client import (
    LOCAL_HEADER,
    LOCATIONS_HEADER,
    MAX_STAT_BATCH,
    REPAIR_HEADER,
    REPLICA_HEADER,
    STREAM_HEADER,
    UPLOAD_SIZE_HEADER,
)
from kraken.origin.node import AlreadyStored, NotHeld, NotMine, OriginNode
from kraken.registry.errors import RangeInvalid
from kraken.registry.names import is_valid_name
from kraken.registry.streaming import GrowingReader, StreamingBlob, byte_range
from kraken.store import DigestMismatch, RangeMismatch, UploadTruncated, UploadUnknown
from kraken.workers import Worker

_CONTENT_RANGE = re.compile(r"\s*(\d+)-(\d+)\s*\Z")
_UPLOAD_PATH = re.compile(rb"/namespace/.+/(?:blobs/[^/]+/uploads|staged-uploads)/([^/?]+)\Z")
_OPEN_RANGE = re.compile(r"\s*(\d{1,18})-\s*\Z")
#: The answer to a request that met a full store (``kraken.proxy`` relays it as OCI JSON).
NO_SPACE_STATUS = 507
NO_SPACE_MESSAGE = "no space left on device: this origin's store is full; try again once space is freed"
# {"digests": [...]}: 74 bytes a digest, with room for spaces (sha512 digests, twice as long, go in half batches).
_MAX_STAT_BODY = MAX_STAT_BATCH * 80 + 1024


def parse_digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except DigestError as e:
        raise HTTPError(400, f"invalid digest: {e}") from None


def check_namespace(ns: str) -> str:
    """``ns`` unchanged if it is a repository name (the registry's grammar), else 400."""
    if not is_valid_name(ns):
        raise HTTPError(
            400,
            f"invalid namespace {ns[:300]!r}: a namespace is a repository name (lowercase components of letters and"
            " digits joined by '.', '_', '__' or '-', separated by '/', at most 255 characters)",
        )
    return ns


def parse_content_range(header: bytes | None) -> tuple[int, int]:
    """``<start>-<end>``, end exclusive (as Kraken's blob client sends it)."""
    if header is None:
        raise HTTPError(400, "missing Content-Range header (<start>-<end>, end exclusive)")
    m = _CONTENT_RANGE.match(header.decode("latin-1"))
    if not m:
        raise HTTPError(400, f"malformed Content-Range {header.decode('latin-1')!r} (want <start>-<end>)")
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise HTTPError(400, f"Content-Range end {end} is before its start {start}")
    return start, end


def parse_offset(header: bytes | None) -> int:
    """Where a staged upload's chunk starts: ``Content-Range: <start>-`` (its length is the body's)."""
    if header is None:
        raise HTTPError(400, "missing Content-Range header (<start>-)")
    m = _OPEN_RANGE.match(header.decode("latin-1"))
    if not m:
        raise HTTPError(400, f"malformed Content-Range {header.decode('latin-1')!r} (want <start>-)")
    return int(m.group(1))


def _replica(request: Request) -> int:
    """The ``Kraken-Replica`` header: 0 for a client's upload, k > 0 for an origin's copy to the k-th replica."""
    value = request.getHeader(REPLICA_HEADER)
    if value is None:
        return 0
    text = value.decode("latin-1").strip() if isinstance(value, bytes) else str(value).strip()
    if not text.isdigit() or not 0 < int(text) < 1000:
        raise HTTPError(400, f"malformed Kraken-Replica header {text!r} (want a replica number from 1)")
    return int(text)


def _repair(request: Request) -> bool:
    """``Kraken-Repair``: another origin's repair copy, which nobody writes back (``kraken.origin.repair``)."""
    return request.getHeader(REPAIR_HEADER) is not None


def _empty(request: Request, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b""


def _pending(request: Request) -> bytes:
    """202: the blob is being fetched from its backend; ask again."""
    request.setResponseCode(202)
    request.setHeader(b"retry-after", b"1")
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b""


def _json(request: Request, doc: object) -> bytes:
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(doc, separators=(",", ":")).encode()


def _peers(request: Request, peers: list[PeerInfo] | None) -> bytes:
    """``{"peers": [...]}``, or 202 while the blob is being fetched (None)."""
    if peers is None:
        return _pending(request)
    request.setHeader(b"content-type", b"application/json")
    doc = {"peers": [p.to_json() for p in peers]}
    return json.dumps(doc, separators=(",", ":")).encode("utf-8") + b"\n"


def _local(request: Request) -> bool:
    """``Kraken-Local``: another origin repairing itself asks; answer from the store alone."""
    return request.getHeader(LOCAL_HEADER) is not None


def _stat_batch_digests(request: Request) -> list[Digest]:
    """The digests of a ``POST /blobs/stat`` body, unique, at most ``MAX_STAT_BATCH``."""
    content = request.content
    body = b"" if content is None else content.read(_MAX_STAT_BODY + 1)
    if len(body) > _MAX_STAT_BODY:
        raise HTTPError(413, f"ask about at most {MAX_STAT_BATCH} digests at once")
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("digests"), list):
        raise HTTPError(400, 'the body must be JSON {"digests": ["sha256:...", ...]}')
    if len(doc["digests"]) > MAX_STAT_BATCH:
        raise HTTPError(413, f"ask about at most {MAX_STAT_BATCH} digests at once, not {len(doc['digests'])}")
    found: dict[Digest, None] = {}
    for item in doc["digests"]:
        if not isinstance(item, str):
            raise HTTPError(400, "digests must be strings")
        found[parse_digest(item)] = None
    return list(found)


def _remaining(content: Any) -> int:
    """Bytes left in the (spooled) request body; a seek, not a read."""
    here = content.tell()
    end = content.seek(0, os.SEEK_END)
    content.seek(here, os.SEEK_SET)
    return int(end - here)


class OriginHTTP:
    """The origin's HTTP API: translates requests to calls on an ``OriginNode`` and its answers and errors to
    responses (``_classify`` is the one place that maps exceptions to statuses)."""

    app = Klein()
    log = Logger()

    def __init__(self, node: OriginNode, *, reads: Worker | None = None, streams: int = 1) -> None:
        """``reads``: the worker that reads a blob being fetched for a ``Kraken-Stream`` GET (None: such a GET is
        answered as any other); ``streams``: such GETs of one blob answered at once, at most (one more: 204)."""
        self._node = node
        self._reads = reads
        self._streams_per_blob = streams
        self._streaming: Counter[Digest] = Counter()

    def resource(self) -> IResource:
        return self.app.resource()

    # -- errors: the one place that turns exceptions into responses --

    @app.handle_errors  # type: ignore[call-overload]  # klein's stubs do not cover methods
    def _error(self, request: Request, failure: Failure) -> bytes | Failure:
        if failure.check(CancelledError):
            return failure  # the client went away; nothing to answer
        code, message = self._classify(request, failure)
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return message.encode("utf-8") + b"\n"

    def _classify(self, request: Request, failure: Failure) -> tuple[int, str]:
        e = failure.value
        if isinstance(e, HTTPError):
            return e.status, e.message
        if isinstance(e, AlreadyStored):
            return 409, str(e)
        if isinstance(e, NotHeld):
            return 404, str(e)
        if isinstance(e, NotMine):
            return 421, str(e)
        if isinstance(e, HTTPException):  # routing: 404 no such route, 405 wrong method
            allowed = getattr(e, "valid_methods", None)
            if allowed:
                request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
            return e.code or 500, e.description or e.name
        if isinstance(e, BlobNotFound):
            return 404, f"blob {e.name} not found"
        if isinstance(e, BackendUnavailable):
            request.setHeader(b"retry-after", b"1")
            return 503, "storage backend unavailable; try again later"  # the details are logged, not sent
        if isinstance(e, UploadUnknown):
            return 404, f"unknown upload {e.args[0] if e.args else ''}".rstrip()
        if isinstance(e, RangeMismatch):
            return 416, str(e)
        if isinstance(e, (UploadTruncated, DigestMismatch)):
            return 400, str(e)
        method, path = request.method.decode("latin-1"), request.uri.decode("latin-1")
        if is_out_of_space(e):
            self.log.warn(
                "{method} {path}: no space left ({error}): answered 507", method=method, path=path, error=str(e)
            )
            return NO_SPACE_STATUS, NO_SPACE_MESSAGE
        self.log.failure("{method} {path} failed", failure, method=method, path=path)
        return 500, "internal error"

    def body_refused(self, method: bytes, path: bytes, failure: Failure) -> Deferred[Refusal]:
        """The site's answer to an upload body the spool could not store
        (``kraken.net.server.BodyRefused``): 507 when the disk is full, else
        500, once the upload it was for is deleted (its handler never runs)."""
        return Deferred.fromCoroutine(self._refuse_body(path, failure))

    async def _refuse_body(self, path: bytes, failure: Failure) -> Refusal:
        m = _UPLOAD_PATH.match(path.split(b"?", 1)[0])
        if m is not None:
            uid = m.group(1).decode("latin-1")
            try:
                await self._node.drop_upload(uid)
            except Exception:
                self.log.failure("deleting upload {uid} failed", uid=uid)
        full = is_out_of_space(failure.value)
        status, message = (NO_SPACE_STATUS, NO_SPACE_MESSAGE) if full else (500, "internal error")
        return Refusal(status, [(b"Content-Type", b"text/plain; charset=utf-8")], message.encode() + b"\n")

    # -- routes --

    @app.route("/health", methods=["GET"])
    def health(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"OK\n"

    @app.route("/stats", methods=["GET"])
    def stats(self, request: Request) -> bytes:
        """What this origin's P2P scheduler has served (agents' pieces, bytes) since it started, and more."""
        return _json(request, self._node.stats())

    @app.route("/blobs/<d>/locations", methods=["GET"])
    def locations(self, request: Request, d: str) -> bytes:
        members = self._node.locations(parse_digest(d))
        request.setHeader(LOCATIONS_HEADER, ",".join(members).encode("ascii"))
        return _empty(request)

    @app.route("/blobs/stat", methods=["POST"])
    async def stat_batch(self, request: Request) -> bytes:
        answer = await self._node.stat_many(_stat_batch_digests(request))
        doc = {
            "held": {str(d): size for d, size in answer.held.items()},
            "locations": {str(d): members for d, members in answer.locations.items()},
            "may_fetch": answer.may_fetch,
        }
        return _json(request, doc)

    @app.route("/blobs/<d>/peers", methods=["GET"])
    async def peers(self, request: Request, d: str) -> bytes:
        return _peers(request, await self._node.peers(parse_digest(d)))

    @app.route("/namespace/<path:ns>/blobs/<d>/peers", methods=["GET"])
    async def namespace_peers(self, request: Request, ns: str, d: str) -> bytes:
        check_namespace(ns)
        return _peers(request, await self._node.peers(parse_digest(d), ns))

    @app.route("/namespace/<path:ns>/blobs/<d>/uploads", methods=["POST"])
    async def start_upload(self, request: Request, ns: str, d: str) -> bytes:
        check_namespace(ns)
        digest = parse_digest(d)
        uid = await self._node.start_upload(ns, digest, _replica(request), repair=_repair(request))
        request.setHeader(b"location", uid.encode("ascii"))
        return _empty(request)

    @app.route("/namespace/<path:ns>/blobs/<d>/uploads/<uid>", methods=["PATCH"])
    async def patch_upload(self, request: Request, ns: str, d: str, uid: str) -> bytes:
        check_namespace(ns)
        digest = parse_digest(d)
        start, end = parse_content_range(request.getHeader(b"content-range"))
        await self._node.refuse_if_stored(ns, digest, _replica(request), upload=uid, repair=_repair(request))
        assert request.content is not None
        extra = _remaining(request.content) - (end - start)
        if extra > 0:
            raise HTTPError(400, f"body holds {extra} bytes more than Content-Range {start}-{end} declares")
        await self._node.append(ns, digest, uid, request.content, offset=start, length=end - start)
        return _empty(request, 204)

    @app.route("/namespace/<path:ns>/blobs/<d>/uploads/<uid>", methods=["PUT"])
    async def commit_upload(self, request: Request, ns: str, d: str, uid: str) -> bytes:
        check_namespace(ns)
        digest = parse_digest(d)
        await self._node.commit(ns, digest, uid, _replica(request), repair=_repair(request))
        return _empty(request, 201)

    @app.route("/namespace/<path:ns>/staged-uploads", methods=["POST"])
    async def start_staged_upload(self, request: Request, ns: str) -> bytes:
        check_namespace(ns)
        uid = await self._node.start_staged(ns)
        request.setHeader(b"location", uid.encode("ascii"))
        return _empty(request)

    @app.route("/namespace/<path:ns>/staged-uploads/<uid>", methods=["PATCH"])
    async def patch_staged_upload(self, request: Request, ns: str, uid: str) -> bytes:
        check_namespace(ns)
        start = parse_offset(request.getHeader(b"content-range"))
        assert request.content is not None
        size = await self._node.append(ns, None, uid, request.content, offset=start, length=None)
        request.setHeader(UPLOAD_SIZE_HEADER, b"%d" % size)
        return _empty(request, 204)

    @app.route("/namespace/<path:ns>/staged-uploads/<uid>", methods=["DELETE"])
    async def drop_staged_upload(self, request: Request, ns: str, uid: str) -> bytes:
        check_namespace(ns)
        await self._node.drop_upload(uid)
        return _empty(request, 204)

    @app.route("/namespace/<path:ns>/blobs/<d>/staged-uploads/<uid>", methods=["PUT"])
    async def commit_staged_upload(self, request: Request, ns: str, d: str, uid: str) -> bytes:
        check_namespace(ns)
        await self._node.commit_staged(ns, parse_digest(d), uid)
        return _empty(request, 201)

    @app.route("/namespace/<path:ns>/blobs/<d>", methods=["GET", "HEAD"])
    async def get_blob(self, request: Request, ns: str, d: str) -> IResource | bytes:
        check_namespace(ns)
        digest = parse_digest(d)
        if request.method == b"GET" and request.getHeader(STREAM_HEADER) is not None and self._reads is not None:
            return await self._stream(request, ns, digest)
        path = await self._node.blob(ns, digest, local=_local(request), head=request.method == b"HEAD")
        if path is None:
            return _pending(request)
        # Klein counts <path:...> as one segment: nothing must be left for File to traverse.
        request.postpath = []
        return File(path, defaultType="application/octet-stream")

    async def _stream(self, request: Request, ns: str, digest: Digest) -> IResource | bytes:
        """A ``Kraken-Stream`` GET: the fetch in progress, as it arrives; 204 when there is none to read."""
        assert self._reads is not None
        if self._streaming[digest] >= self._streams_per_blob:
            return _empty(request, 204)  # enough copies on our link already: this one waits for P2P
        growing = await self._node.growing(ns, digest)
        reader = None if growing is None else await GrowingReader.open(str(digest), growing, self._reads)
        if growing is None or reader is None or self._streaming[digest] >= self._streams_per_blob:
            if reader is not None:
                reader.close()  # others began while this one waited for the file
            return _empty(request, 204)
        try:
            wanted = byte_range(request.getHeader(b"range"), growing.length)
        except RangeInvalid as e:
            reader.close()
            request.setHeader(b"content-range", b"bytes */%d" % growing.length)
            raise HTTPError(416, e.message) from None
        resource = StreamingBlob(reader)
        resource.select(wanted)
        self._streaming[digest] += 1
        request.notifyFinish().addBoth(lambda _: self._stream_ended(digest))
        self.log.info("streaming {digest} to a client while it is fetched", digest=str(digest), namespace=ns)
        request.postpath = []
        return resource

    def _stream_ended(self, digest: Digest) -> None:
        self._streaming[digest] -= 1
        if self._streaming[digest] <= 0:
            del self._streaming[digest]

    @app.route("/namespace/<path:ns>/blobs/<d>/metainfo", methods=["GET"])
    async def get_metainfo(self, request: Request, ns: str, d: str) -> bytes:
        check_namespace(ns)
        info = await self._node.metainfo(ns, parse_digest(d), local=_local(request))
        if info is None:
            return _pending(request)
        request.setHeader(b"content-type", b"application/json")
        return info.to_json()
