"""The proxy's registry source (``IRegistrySource``): blobs on the origin,
tags and manifest records on the build-index. The proxy itself keeps no blob beyond an upload
in progress; blob reads are relayed from the origin as they stream.

An origin out of space answers 507; once every location of the blob has
answered so (``ClusterClient`` tries each once, and does not repeat the
round), the registry client gets 507 ``InsufficientStorage`` as OCI JSON.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Awaitable
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web._newclient import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IRequest
from twisted.web.resource import IResource, Resource
from zope.interface import implementer

from kraken.buildindex.client import BuildIndexClient, BuildIndexes, TagRefused
from kraken.core import Digest
from kraken.files import remove_quietly
from kraken.net import HTTPStatusError
from kraken.origin.client import ClusterClient, DigestRefused
from kraken.proxy.stage import Stager
from kraken.registry.errors import DigestInvalid, InsufficientStorage, ManifestBlobUnknown, ManifestInvalid, Unknown
from kraken.registry.source import IRegistrySource, ManifestRecord, Page
from kraken.store.spool import SPOOL_PREFIX
from kraken.workers import Worker

T = TypeVar("T")
#: An origin's answer when its store is full (``kraken.origin.http``).
NO_SPACE_STATUS = 507
ORIGIN_FULL = "no space left on device: the origin cluster cannot store this blob now"

# Headers of the origin's blob response that the registry client should see.
# (Twisted's client keeps Content-Length out of the headers: see _respond.)
_RELAYED = (b"content-range", b"accept-ranges", b"last-modified")


@implementer(IRegistrySource)
class ProxySource:
    log = Logger()

    def __init__(
        self,
        origin: ClusterClient,
        build_index: BuildIndexClient | BuildIndexes,
        *,
        worker: Worker,
        scratch: str,
        check_concurrency: int = 8,
        stager: Stager | None = None,
    ) -> None:
        self._origin = origin
        self._stager = stager
        self._concurrency = check_concurrency
        self._index = build_index
        self._worker = worker
        self._scratch = scratch

    async def stat_blob(self, repo: str, digest: Digest) -> int | None:
        """The blob's size on the origin cluster, or None. An origin that lacks
        the blob and cannot ask its storage backend now answers 503: that is
        "not here" too, so that a client checking before it pushes (every
        client does) pushes the blob instead of failing while the backend is
        down (as Kraken does)."""
        try:
            return await _space_relayed(self._origin.stat(repo, digest), digest)
        except HTTPStatusError as e:
            if e.code != 503:
                raise
            self.log.warn(
                "the origin cannot tell whether it can get {digest} from its backend now: answering not found",
                digest=str(digest),
                namespace=repo,
            )
            return None

    async def stat_blobs(self, repo: str, digests: list[Digest]) -> dict[Digest, int | None]:
        """Batched (``ClusterClient.stat_many``); what the batches cannot
        tell is asked blob by blob as ``stat_blob`` does (503: not found)."""
        return await self._origin.stat_many(repo, digests, concurrency=self._concurrency, single=self.stat_blob)

    async def blob_resource(self, repo: str, digest: Digest) -> IResource | None:
        size = await self.stat_blob(repo, digest)
        if size is None:
            return None
        return RelayedBlob(self._origin, repo, digest, size)

    async def read_blob(self, repo: str, digest: Digest, limit: int) -> bytes | None:
        return await _space_relayed(self._origin.read_small(repo, digest, limit), digest)

    async def commit_blob(self, repo: str, digest: Digest, path: str, size: int, upload: str = "") -> None:
        """Store the blob on its origin, which checks its digest before storing it: DIGEST_INVALID when the
        bytes are not ``digest`` (the origin keeps nothing), so the proxy need not hash uploads itself. An
        upload streamed to an origin as it arrived is stored there (``kraken.proxy.stage``); otherwise, or if
        that fails, the file at ``path`` is uploaded to the blob's origin."""
        if self._stager is not None and upload and await self._stager.commit(upload, repo, digest, size):
            self.log.info("blob {digest} ({bytes} bytes) stored as it was streamed", digest=str(digest), bytes=size)
            return
        try:
            await _space_relayed(self._origin.upload(repo, digest, path, size), digest)
        except DigestRefused as e:
            self.log.info("the origin refused blob {digest}: {error}", digest=str(digest), error=str(e))
            raise DigestInvalid(
                "the uploaded content does not match the digest", detail={"expected": str(digest)}
            ) from None
        self.log.info("blob {digest} ({bytes} bytes) handed to the origin", digest=str(digest), bytes=size)

    async def get_manifest(self, repo: str, digest: Digest) -> ManifestRecord | None:
        return await self._index.get_manifest(repo, digest)

    async def put_manifest(self, repo: str, record: ManifestRecord, body: bytes, tag: str | None) -> None:
        path = await self._worker.run(_write_scratch, self._scratch, body)
        try:
            await _space_relayed(self._origin.upload(repo, record.digest, path, len(body)), record.digest)
        finally:
            await self._worker.run(remove_quietly, path)
        await self._index.put_manifest(repo, record)
        if tag is not None:
            try:
                await self._index.put_tag(repo, tag, record.digest)
            except TagRefused as e:
                if not e.missing:  # refused for what the manifest is (too many references, say)
                    raise ManifestInvalid(str(e)) from None
                raise ManifestBlobUnknown(str(e), {"missing": [str(d) for d in e.missing]}) from None
        self.log.info(
            "manifest {digest} stored in {namespace} (tag {tag})", digest=str(record.digest), namespace=repo, tag=tag
        )

    async def resolve_tag(self, repo: str, tag: str) -> Digest | None:
        return await self._index.get_tag(repo, tag)

    async def list_tags(self, repo: str, n: int | None, last: str | None) -> Page | None:
        return await self._index.list_tags(repo, n, last)

    async def list_repositories(self, n: int | None, last: str | None) -> Page:
        return await self._index.list_repositories(n, last)

    async def referrers(self, repo: str, subject: Digest) -> list[ManifestRecord]:
        return await self._index.referrers(repo, subject)


async def _space_relayed(call: Awaitable[T], digest: Digest) -> T:
    """``call``, with an origin's 507 (its store is full) raised as ``InsufficientStorage``."""
    try:
        return await call
    except HTTPStatusError as e:
        if e.code != NO_SPACE_STATUS:
            raise
        raise InsufficientStorage(ORIGIN_FULL, detail={"digest": str(digest), "reason": "ENOSPC"}) from None


def _write_scratch(directory: str, body: bytes) -> str:
    fd, path = tempfile.mkstemp(dir=directory, prefix=SPOOL_PREFIX)  # swept at start if left behind
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
    except BaseException:
        remove_quietly(path)
        raise
    return path


@implementer(IResource)
class RelayedBlob(Resource):
    """Serves a blob by relaying the origin's response: ``Range`` goes up,
    status and range headers come down, and the body streams through with
    back-pressure (the origin connection is the request's producer)."""

    isLeaf = True
    log = Logger()

    def __init__(self, origin: ClusterClient, repo: str, digest: Digest, size: int) -> None:
        super().__init__()
        self._origin = origin
        self._repo = repo
        self._digest = digest
        self._size = size

    def render_HEAD(self, request: IRequest) -> Any:
        return self._relay(request, b"HEAD")

    def render_GET(self, request: IRequest) -> Any:
        return self._relay(request, b"GET")

    def _relay(self, request: Any, method: bytes) -> Any:
        headers: dict[bytes, list[bytes]] = {}
        for name in (b"range", b"if-range"):
            value = request.getHeader(name)
            if value is not None:
                headers[name] = [value.encode("latin-1") if isinstance(value, str) else value]
        d = Deferred.fromCoroutine(self._origin.get(self._repo, self._digest, method=method.decode(), headers=headers))
        gone: list[bool] = []

        def client_went_away(_: Failure) -> None:
            gone.append(True)
            d.cancel()

        request.notifyFinish().addErrback(client_went_away)
        d.addCallback(self._respond, request, method, gone)
        d.addErrback(self._failed, request, gone)
        return server.NOT_DONE_YET

    def _respond(self, response: Any, request: Any, method: bytes, gone: list[bool]) -> None:
        if gone:
            # The origin answered after all; nobody is left to read it.
            response.original.deliverBody(_Abandon())
            return
        request.setResponseCode(response.code)
        for name in _RELAYED:
            values = response.headers.getRawHeaders(name)
            if values:
                request.responseHeaders.setRawHeaders(name, values)
        request.setHeader(b"content-type", b"application/octet-stream")
        if method == b"GET" and response.length != UNKNOWN_LENGTH:
            request.setHeader(b"content-length", b"%d" % response.length)
        elif method == b"HEAD" and response.code == 200:
            request.setHeader(b"content-length", b"%d" % self._size)
        if method == b"HEAD" or response.code in (304, 416):
            response.original.deliverBody(_Discard())
            request.finish()
            return
        response.original.deliverBody(_Relay(request))

    def _failed(self, failure: Failure, request: Any, gone: list[bool]) -> None:
        if failure.check(CancelledError) or gone:
            # The client went away: there is no one to answer (finishing the
            # request now would raise "Request.finish called on a request
            # after its connection was lost").
            self.log.debug("relaying {digest} stopped: the client went away", digest=str(self._digest))
            return
        self.log.failure("relaying {digest} from the origin failed", failure, digest=str(self._digest))
        if request.startedWriting:
            request.loseConnection()
            return
        e = failure.value
        error: Unknown | InsufficientStorage = Unknown("the origin could not serve this blob", status=502)
        if isinstance(e, HTTPStatusError) and e.code == NO_SPACE_STATUS:  # fetching it from its backend
            error = InsufficientStorage(ORIGIN_FULL, detail={"digest": str(self._digest), "reason": "ENOSPC"})
        body = error.body()
        request.setResponseCode(error.status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


class _Relay(Protocol):
    def __init__(self, request: Any) -> None:
        self._request = request
        self._client_gone = False
        request.notifyFinish().addErrback(self._client_went_away)

    def connectionMade(self) -> None:
        self._request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        if not self._client_gone:
            self._request.write(data)

    def _client_went_away(self, _: Failure) -> None:
        self._client_gone = True
        self.transport.stopProducing()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]
        if self._client_gone:
            return
        self._request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            self._request.finish()
        else:
            # The origin broke off mid-body: the client must see a short read,
            # never a complete-looking response.
            self._request.loseConnection()


class _Discard(Protocol):
    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]
        pass


class _Abandon(Protocol):
    """Drops a response body unread: the origin connection is closed."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]
        pass
