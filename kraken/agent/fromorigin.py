"""The first host of an upstream image: a blob its origin is still fetching, streamed from that origin over HTTP
(``OriginStreams``), so that containerd's bytes start while the origin's fetch runs.

Without it the first host's path is three transfers in series: the origin fetches the blob from the upstream
registry and commits it, only then does the tracker have its metainfo and the agent download it peer to peer, and
only then does containerd get it. With ``origins`` in the agent's config, a GET of a blob that is neither in this
host's cache nor streaming here already first asks the blob's origin (``ClusterClient.get`` with ``Kraken-Stream``):

- the origin is fetching the blob (or starts now) from a backend that tells its progress: it answers 200 and
  streams the blob as it arrives (``kraken.origin.http``). The agent writes it into a file of its own (under the
  store's ``tmp/``, which a restart empties), its length reserved first (``posix_fallocate``: a full disk is a
  clean 507 before any byte is served), hashing it as it is written, and serves containerd from what is on disk
  (``kraken.registry.streaming.GrowingReader``: ``Range`` too). Once the body is whole, its digest is checked and
  the blob installed into the cache with the origin's metainfo (from the tracker); only then does containerd get
  the last byte, and the scheduler seeds it (``installed``), as it does a finished download. A wrong digest, a
  short body, an origin that goes away: nothing is installed, the file is deleted, containerd's connection is
  aborted (it falls back to its next host);
- anything else (204: the origin holds the blob, get it peer to peer; 404; an origin that fails or cannot be
  reached): the usual path, through the tracker and peers.

Other agents asking meanwhile take the same path while the origin's fetch runs, up to the origin's
``fetch_streams`` (1 by default) at once: the upstream's bytes still cross the upstream link once (into the
origin), and the origin's file is read once per stream from its page cache. The others hear 204 and get the blob
peer to peer once the origin has committed it, as every host did before.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol as WireProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from kraken.backends.remote import BodySink, Discard
from kraken.core import Digest, MetaInfo
from kraken.files import remove_quietly
from kraken.net import HTTPStatusError
from kraken.net.retry import NETWORK_ERRORS
from kraken.origin.client import STREAM_HEADER
from kraken.registry.streaming import GrowingReader, StreamingBlob
from kraken.store import CAStore
from kraken.store.downloads import reserve
from kraken.store.growing import GrowingFile
from kraken.workers import Worker


class Origins(Protocol):
    """What the agent needs of ``kraken.origin.client.ClusterClient``."""

    async def get(
        self, namespace: str, digest: Digest, *, method: str = "GET", headers: dict[bytes, list[bytes]] | None = None
    ) -> IResponse: ...


MetaInfoSource = Callable[[str, Digest], Awaitable[MetaInfo | None]]


class WrongDigest(ValueError):
    """What the origin streamed is not the blob asked for."""


class OriginStreams:
    """Blobs streamed from origins that are fetching them, by digest (one stream per blob on this host)."""

    log = Logger()

    def __init__(
        self,
        origins: Origins,
        store: CAStore,
        tmp: str,
        *,
        metainfo: MetaInfoSource,
        worker: Worker,
        clock: IReactorTime,
        timeout: float,
        installed: Callable[[str, MetaInfo], None] = lambda namespace, info: None,
    ) -> None:
        """``tmp``: where the files being written live (emptied at start); ``timeout``: seconds without a byte
        from the origin before the stream is given up; ``installed(namespace, info)``: told of each blob installed
        (the scheduler's ``seed``, so that this host serves it to its peers)."""
        self._origins = origins
        self._store = store
        self._tmp = tmp
        self._metainfo = metainfo
        self._worker = worker
        self._clock = clock
        self._timeout = timeout
        self._installed = installed
        self._running: dict[Digest, GrowingFile] = {}

    async def resource(self, namespace: str, digest: Digest) -> StreamingBlob | None:
        """The answer to a GET of the blob streaming from its origin; None to take the usual path."""
        growing = self._running.get(digest)
        if growing is None:
            if await self._store.stat(digest) is not None:
                return None
            growing = await self._open(namespace, digest)
        reader = None if growing is None else await GrowingReader.open(str(digest), growing, self._worker)
        return None if reader is None else StreamingBlob(reader)

    async def _open(self, namespace: str, digest: Digest) -> GrowingFile | None:
        try:
            response = await self._origins.get(namespace, digest, headers={STREAM_HEADER: [b"1"]})
        except CancelledError:
            raise
        except (HTTPStatusError, *NETWORK_ERRORS) as e:
            self.log.info("origin of {digest} did not answer a stream: {error}", digest=str(digest), error=str(e))
            return None
        if response.code != 200 or response.length is UNKNOWN_LENGTH:
            response.deliverBody(Discard())
            return None
        running = self._running.get(digest)  # opened meanwhile by another request
        if running is not None:
            response.deliverBody(_Drop())  # a second copy of the same stream: not read
            return running
        growing = self._running[digest] = GrowingFile(int(response.length))
        Deferred.fromCoroutine(self._write(namespace, digest, response, growing)).addErrback(
            lambda f: self.log.failure("streaming {digest} from its origin failed", f, digest=str(digest))
        )
        return growing

    async def _write(self, namespace: str, digest: Digest, response: IResponse, growing: GrowingFile) -> None:
        path = os.path.join(self._tmp, f"origin-{uuid.uuid4().hex}")
        installed = False
        self.log.info(
            "streaming {digest} from its origin while it fetches it ({bytes} bytes)",
            digest=str(digest),
            bytes=growing.length,
            namespace=namespace,
        )
        try:
            try:
                fd, reader = await self._worker.run(_create_reserved, path, growing.length)
            except BaseException:
                response.deliverBody(Discard())
                raise
            growing.attach(reader)
            hasher = hashlib.new(digest.algorithm)
            sink = BodySink(
                fd,
                0,
                growing.length,
                self._worker,
                self._clock,
                self._timeout,
                on_written=growing.advance,
                hasher=hasher,
            )
            response.deliverBody(sink)
            await sink.done
            if hasher.hexdigest() != digest.hex:
                raise WrongDigest(f"the origin sent {digest.algorithm}:{hasher.hexdigest()}, not {digest}")
            info = await self._metainfo(namespace, digest)
            if info is None or info.length != growing.length:
                raise ValueError(f"no metainfo of {growing.length} bytes for {digest} from the tracker")
            await self._store.install(path, info)
            installed = True
            self._installed(namespace, info)
            growing.end(None)
            self.log.info("streamed {digest} from its origin; installed", digest=str(digest), namespace=namespace)
        except BaseException as e:
            self.log.warn(
                "streaming {digest} from its origin failed: {error}; nothing installed",
                digest=str(digest),
                error=_describe(e),
                namespace=namespace,
            )
            growing.end(e)
        finally:
            del self._running[digest]
            if not installed:
                await self._worker.run(remove_quietly, path)


class _Drop(WireProtocol):
    """Drops a response body unread (its connection is closed)."""

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        transport.stopProducing()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        pass


def _describe(e: BaseException) -> str:
    """A failure in words: a response that broke off names what ended it (the origin aborts a blob it could
    not prove), not a list of Failures."""
    if isinstance(e, ResponseFailed):
        reasons = ", ".join(sorted({r.type.__name__ for r in e.reasons})) or "unknown"
        return f"the origin's answer broke off ({reasons})"
    return str(e) or type(e).__name__


def _create_reserved(path: str, length: int) -> tuple[int, int]:
    """A new file of ``length`` bytes reserved on disk: a descriptor to write it, one to read it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        reserve(fd, length)
        return fd, os.dup(fd)
    except BaseException:
        os.close(fd)
        remove_quietly(path)
        raise
