"""The agent's registry source with streaming blobs: a GET of a blob this host is still downloading is answered as
its pieces are checked, not once the whole blob is in the cache (docs/operations.md section 26).

``StreamingSource`` is ``AgentSource`` with one change, in ``blob_resource``: it starts (or joins) the download with
``Scheduler.start`` rather than waiting for it with ``download``. A blob already in the cache is served as before (a
``static.File``, pinned); a download in progress becomes a ``kraken.registry.streaming.StreamingBlob`` over a
``PartialReader``, which reads the partial file through a descriptor opened before anything is sent, so the
install's rename (or the cleanup of a failed download) does not pull the file from under a reader. With
``from_origins`` (``kraken.agent.fromorigin``), a blob an origin is still fetching is streamed from that origin.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import IResource

from kraken.agent.fromorigin import OriginStreams
from kraken.agent.source import AgentSource
from kraken.core import Digest
from kraken.net import HTTPStatusError
from kraken.net.retry import NETWORK_ERRORS
from kraken.p2p.scheduler import BlobNotFound, Download, DownloadFailed
from kraken.registry.errors import Unknown
from kraken.registry.streaming import DescriptorReads, StreamingBlob
from kraken.workers import Worker


class Starter(Protocol):
    """What the streaming source needs of ``kraken.p2p.scheduler.Scheduler``."""

    async def download(self, namespace: str, digest: Digest) -> str: ...

    async def start(self, namespace: str, digest: Digest) -> str | Download: ...


class PartialReader(DescriptorReads):
    """A download in progress as ``StreamingBlob`` reads it (``IncomingBlob``): reads through one descriptor, in
    ``worker``. ``open`` it; ``close`` it once (the producer does, after its last read)."""

    def __init__(self, download: Download, fd: int, worker: Worker) -> None:
        super().__init__(str(download.info.digest), fd, worker)
        self._download = download
        self.length = download.info.length
        self.piece_length = download.info.piece_length

    @classmethod
    async def open(cls, download: Download, worker: Worker) -> PartialReader:
        """``OSError`` if neither the partial file nor (installed meanwhile) the cached blob can be opened."""
        fd = await worker.run(_open_either, download.data_path, download.cache_path)
        return cls(download, fd, worker)

    def when_piece(self, index: int) -> Deferred[None]:
        return self._download.when_piece(index)

    def verified(self) -> Deferred[object]:
        d: Deferred[Any] = self._download.finished()
        return d


class StreamingSource(AgentSource):
    """``AgentSource`` whose blob GETs stream downloads in progress. Takes ``AgentSource``'s arguments; its
    scheduler must also ``start`` downloads."""

    log = Logger()

    def __init__(
        self, scheduler: Starter, *args: Any, worker: Worker, from_origins: OriginStreams | None = None, **kwargs: Any
    ) -> None:
        super().__init__(scheduler, *args, worker=worker, **kwargs)
        self._starter = scheduler
        self._reads = worker
        self._from_origins = from_origins

    async def blob_resource(self, repo: str, digest: Digest) -> IResource | None:
        if self._from_origins is not None:  # a blob its origin is still fetching: streamed from there
            streamed = await self._from_origins.resource(repo, digest)
            if streamed is not None:
                return streamed
        # The size first: with the mirror's sizes, a blob no origin has is a fast None, a silent tracker a 503.
        if await self.stat_blob(repo, digest) is None:
            return None
        started = await self._start(repo, digest)
        if started is None or isinstance(started, str):  # unknown, or in the cache: served as ever
            return None if started is None else await super().blob_resource(repo, digest)
        try:
            reader = await PartialReader.open(started, self._reads)
        except OSError as e:  # the download failed (and was cleaned up) meanwhile
            detail = {"digest": str(digest)}
            raise Unknown(f"the agent could not read this blob: {e}", detail=detail, status=502) from None
        return StreamingBlob(reader)

    async def _start(self, repo: str, digest: Digest) -> str | Download | None:
        """The cached path, or the download in progress; None when no origin has the blob."""
        try:
            return await self._starter.start(repo, digest)
        except BlobNotFound:
            return None
        except (DownloadFailed, HTTPStatusError, *NETWORK_ERRORS) as e:
            self.log.warn("could not start downloading {digest} in {namespace}: {error}", digest=str(digest),
                          namespace=repo, error=str(e) or type(e).__name__)  # fmt: skip
            raise Unknown(
                f"the agent could not download this blob: {e}", detail={"digest": str(digest)}, status=502
            ) from None


def _open_either(partial: str, cached: str) -> int:
    try:
        return os.open(partial, os.O_RDONLY)
    except FileNotFoundError:
        return os.open(cached, os.O_RDONLY)
