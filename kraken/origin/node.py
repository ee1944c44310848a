"""The origin, protocol-neutral: what an origin does with blobs, whoever asks.

``OriginNode`` owns the origin's rules. Its HTTP app (``kraken.origin.http``)
and its P2P side (the scheduler's ``on_missing``) only translate to calls on
it; it knows nothing of requests, headers or status codes:

- **commit** (``start_upload``, ``refuse_if_stored``, ``append``,
  ``commit``): an upload is stored only once ``CAStore.commit`` has hashed it
  again and found the digest it was named by;
- **write-back**: every commit, and every "already stored" answer, makes sure
  the blob is queued durably for its namespace's backend (a no-op when it is
  already), before the caller hears of it: a commit whose queueing failed is
  queued when the client retries and hears "already stored". A replica's copy
  k > 0 is queued to start k x ``replica_delay`` seconds later, so that the
  origin that took the client's upload usually writes it back alone;
- **replicate**: a client's upload (never a copy: ``replica`` 0) is copied to
  the other replicas of the blob's placement before ``commit`` returns
  (``Placement.replicate``, which never raises);
- **fetch on miss** and **repair** (``held``, ``blob``, ``metainfo``,
  ``peers``, ``on_missing``): a blob asked for and not here is fetched by the
  ``BlobFetcher``, whose sources in a cluster are the other origins first
  (repair: ``kraken.origin.cluster.Repair``), then the namespace's backend;
  ``local`` questions (another origin repairing itself) are answered from the
  store alone;
- **placement** (``locations``, ``stat_many``), **peers** (this origin's own
  P2P address once it holds a blob) and **stats**.

Background ring repair (walking the store against the ring, copying what
the others lack) is ``kraken.origin.repair.RingRepair``, a Service the tap
adds; its counters are the ``repair`` section of ``stats()``. Seams:
readiness and metrics read ``stats()`` (and ``counters``), never the HTTP app.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Protocol

import attrs
from attrs import AttrsInstance
from twisted.logger import Logger

from kraken.core import Digest, MetaInfo
from kraken.core.peer import PeerInfo
from kraken.origin.fetch import BlobFetcher
from kraken.p2p.scheduler import Stats
from kraken.store import CAStore, DigestMismatch, UploadUnknown
from kraken.store.cas import CommitResult
from kraken.store.growing import GrowingFile


class AlreadyStored(Exception):
    """The store holds the blob already (uploaders treat it as success)."""

    def __init__(self, digest: Digest) -> None:
        super().__init__(f"blob {digest} already exists")


class NotMine(Exception):
    """An upload started before its digest was known is not this origin's to store (421): the blob's placement
    is elsewhere in the ring."""


class NotHeld(Exception):
    """The store lacks it and nothing will fetch it (404)."""


class Placement(Protocol):
    """Where blobs live in the origin cluster (``kraken.origin.cluster.OriginRing``)."""

    def locations(self, digest: Digest) -> list[str]:
        """The healthy members ("host:port") of the blob's placement, best first."""
        ...

    def mine(self, digest: Digest) -> bool:
        """Whether this origin is one of the members that hold ``digest``."""
        ...

    async def replicate(self, namespace: str, digest: Digest, size: int) -> None:
        """Copy a blob just committed here to the other replicas; never raises."""
        ...

    def stats(self) -> AttrsInstance:
        """Counters (an attrs instance), the ``cluster`` section of ``stats()``."""
        ...


class WriteBack(Protocol):
    """The durable write-back queue (``kraken.origin.writeback.WriteBackQueue``)."""

    async def add(self, namespace: str, digest: Digest, delay: float = 0.0) -> None: ...

    def stats(self) -> AttrsInstance:
        """Counters (an attrs instance), the ``writeback`` section of ``stats()``."""
        ...


class HasStats(Protocol):
    """A part of the origin with counters (``kraken.origin.repair.RingRepair``)."""

    def stats(self) -> AttrsInstance:
        """Counters (an attrs instance), a section of ``stats()``."""
        ...


@attrs.define
class Counters:
    """Questions this origin answered since it started (in ``stats()``)."""

    stat_batches: int = 0  # batched stat questions
    stat_batch_digests: int = 0  # the digests they asked about
    blob_heads: int = 0  # questions about one blob's size (HEAD)


@attrs.frozen
class StatAnswer:
    """The answer to ``stat_many``: what the store holds (digest -> size),
    where the others live ("host:port", best first), and whether a blob
    absent here could still come from a storage backend."""

    held: dict[Digest, int]
    locations: dict[Digest, list[str]]
    may_fetch: bool


class OriginNode:
    """See the module docstring. ``advertise`` is this origin's HTTP address
    ("host:port"): without a ``placement`` every blob's place is this origin
    alone. Without ``fetcher`` a missing blob is ``NotHeld``; without
    ``writeback`` nothing is written back."""

    log = Logger()

    def __init__(
        self,
        store: CAStore,
        *,
        advertise: str,
        fetcher: BlobFetcher | None = None,
        placement: Placement | None = None,
        writeback: WriteBack | None = None,
        replica_delay: float = 0.0,
        repair: HasStats | None = None,
    ) -> None:
        self.store = store
        self.advertise = advertise
        self._fetcher = fetcher
        self._placement = placement
        self._writeback = writeback
        self._replica_delay = replica_delay
        self._repair = repair
        self._peer: PeerInfo | None = None
        self._p2p_stats: Callable[[], Stats] | None = None
        self.counters = Counters()

    def seeds_as(self, peer: PeerInfo | None, stats: Callable[[], Stats] | None = None) -> None:
        """The P2P side this origin seeds from (its scheduler, built after the
        node since it calls ``on_missing``): ``peers`` lists ``peer``, marked
        complete and an origin, once the store holds the blob; ``stats()``
        starts with ``stats()``'s counters."""
        self._peer = None if peer is None else attrs.evolve(peer, complete=True, origin=True)
        self._p2p_stats = stats

    @property
    def fetcher(self) -> BlobFetcher | None:
        """What fetches a missing blob (from the other origins or a backend); None: nothing does."""
        return self._fetcher

    # -- placement and stats --

    def locations(self, digest: Digest) -> list[str]:
        """Where clients should go for ``digest`` now, best first."""
        return [self.advertise] if self._placement is None else self._placement.locations(digest)

    async def stat_many(self, digests: list[Digest]) -> StatAnswer:
        """Which of ``digests`` the store holds, where the others live; never starts a fetch."""
        held = await self.store.stat_many(digests)
        self.counters.stat_batches += 1
        self.counters.stat_batch_digests += len(digests)
        locations = {d: self.locations(d) for d in digests if d not in held}
        may_fetch = self._fetcher is not None and self._fetcher.has_backends
        return StatAnswer(held, locations, may_fetch)

    def stats(self) -> dict[str, object]:
        """The P2P side's counters, this node's, then the ``cluster``, ``writeback`` and ``repair`` sections."""
        stats: dict[str, object] = {} if self._p2p_stats is None else attrs.asdict(self._p2p_stats())
        stats.update(attrs.asdict(self.counters))
        if self._placement is not None:
            stats["cluster"] = attrs.asdict(self._placement.stats())
        if self._writeback is not None:
            stats["writeback"] = attrs.asdict(self._writeback.stats())
        if self._repair is not None:
            stats["repair"] = attrs.asdict(self._repair.stats())
        return stats

    # -- fetch on miss --

    async def held(self, namespace: str, digest: Digest, *, local: bool = False) -> bool:
        """True if the store holds the blob; False while the fetcher fetches
        it (the first question starts the fetch). ``NotHeld`` or
        ``kraken.backends.BlobNotFound`` when neither has it,
        ``BackendUnavailable`` and ``OutOfSpace`` when the fetch failed lately. ``local``: answered
        from the store alone."""
        if self._fetcher is not None and not local:
            return await self._fetcher.ensure(namespace, digest)
        if await self.store.stat(digest) is None:
            raise NotHeld(f"blob {digest} not found")
        return True

    async def blob(self, namespace: str, digest: Digest, *, local: bool = False, head: bool = False) -> str | None:
        """The path of the blob's file, to be read; None while it is being
        fetched (see ``held``). A read records the access time (for the cache
        cleanup); a ``head`` (a question about its size) is counted instead."""
        if head:
            self.counters.blob_heads += 1
        if not await self.held(namespace, digest, local=local):
            return None
        if not head:
            await self.store.touch(digest)
        return self.store.blob_path(digest)

    async def growing(self, namespace: str, digest: Digest) -> GrowingFile | None:
        """The file of a running fetch of the blob, to serve while it arrives (``BlobFetcher.growing``)."""
        return None if self._fetcher is None else await self._fetcher.growing(namespace, digest)

    async def metainfo(self, namespace: str, digest: Digest, *, local: bool = False) -> MetaInfo | None:
        """The blob's metainfo; None while the blob is being fetched (see ``held``)."""
        info = await self.store.metainfo(digest)
        if info is None:
            if not await self.held(namespace, digest, local=local):
                return None
            info = await self.store.metainfo(digest)  # fetched meanwhile
            if info is None:
                raise NotHeld(f"metainfo of {digest} not found")
        return info

    async def peers(self, digest: Digest, namespace: str | None = None) -> list[PeerInfo] | None:
        """This origin, if it seeds and holds the blob; None while a fetch of
        it runs. Only a question that names the ``namespace`` starts one."""
        if self._fetcher is not None:
            if namespace is None and self._fetcher.fetching(digest):
                return None
            if namespace is not None and not await self._fetcher.ensure(namespace, digest):
                return None
        if self._peer is not None and await self.store.stat(digest) is not None:
            return [self._peer]
        return []

    async def on_missing(self, namespace: str, digest: Digest) -> bool:
        """The P2P scheduler's hook for a handshake naming a blob the store
        lacks: starts the fetch; True while it runs (the peer hears BUSY and
        comes back), False when the blob is here after all or nothing can
        give it (the peer hears the blob is unknown)."""
        if self._fetcher is None:
            return False
        return await self._fetcher.fetching_for_peer(namespace, digest)

    # -- uploads: commit, write-back, replicate --

    async def refuse_if_stored(
        self, namespace: str, digest: Digest, replica: int = 0, *, upload: str = "", repair: bool = False
    ) -> None:
        """``AlreadyStored`` if the store holds the blob, once it is sure to
        be written back and ``upload`` (one that has become useless) is gone.
        ``repair``: another origin's repair copy, which nobody writes back
        (see ``kraken.origin.repair``)."""
        if await self.store.stat(digest) is None:
            return
        if upload:
            await self.drop_upload(upload)
        await self._written_back(namespace, digest, replica, repair)
        raise AlreadyStored(digest)

    async def start_upload(self, namespace: str, digest: Digest, replica: int = 0, *, repair: bool = False) -> str:
        """A new upload's id; ``AlreadyStored`` if the blob is here (see ``refuse_if_stored``)."""
        await self.refuse_if_stored(namespace, digest, replica, repair=repair)
        uid = await self.store.uploads.create()
        self.log.debug("upload {uid} of {digest} started", uid=uid, digest=str(digest), namespace=namespace)
        return uid

    async def start_staged(self, namespace: str) -> str:
        """A new upload whose digest is not known yet (a proxy streaming a client's upload as it arrives): its
        id. Its bytes are hashed as they arrive, like any upload's; ``commit_staged`` names the digest."""
        uid = await self.store.uploads.create()
        self.log.debug("upload {uid} started before its digest is known", uid=uid, namespace=namespace)
        return uid

    async def append(
        self, namespace: str, digest: Digest | None, uid: str, content: IO[bytes], *, offset: int, length: int | None
    ) -> int:
        """Write ``length`` bytes of ``content`` (None: all it holds) at ``offset`` of the upload; its size now."""
        size = await self.store.uploads.append(uid, content, offset=offset, length=length)
        self.log.debug(
            "upload {uid} now holds {bytes} bytes",
            uid=uid,
            bytes=size,
            digest=str(digest or ""),
            namespace=namespace,
        )
        return size

    async def commit_staged(self, namespace: str, digest: Digest, uid: str) -> CommitResult:
        """``commit`` an upload started by ``start_staged``, if this origin is one of the blob's placement
        (``NotMine`` otherwise, the upload deleted: the proxy uploads the blob to its placement instead)."""
        if self._placement is not None and not self._placement.mine(digest):
            await self.drop_upload(uid)
            raise NotMine(f"this origin is not in the placement of {digest}: upload it to its locations")
        return await self.commit(namespace, digest, uid)

    async def commit(
        self, namespace: str, digest: Digest, uid: str, replica: int = 0, *, repair: bool = False
    ) -> CommitResult:
        """Store the upload as ``digest`` (``DigestMismatch`` deletes it), make
        sure it is written back (unless it is a ``repair`` copy), and for a
        client's upload (``replica`` 0) copy it to the other replicas; returns
        once all that is done."""
        try:
            result = await self.store.commit(uid, digest)
        except DigestMismatch as e:
            self.log.warn(
                "upload {uid} rejected: {error}", uid=uid, error=str(e), digest=str(digest), namespace=namespace
            )
            raise
        self.log.info(
            "blob {digest} committed ({bytes} bytes, new={created})",
            digest=str(digest),
            bytes=result.metainfo.length,
            created=result.created,
            replica=replica,
            namespace=namespace,
        )
        await self._written_back(namespace, digest, replica, repair)
        if replica == 0 and self._placement is not None:
            await self._placement.replicate(namespace, digest, result.metainfo.length)
        return result

    async def _written_back(self, namespace: str, digest: Digest, replica: int, repair: bool = False) -> None:
        if self._writeback is not None and not repair:
            await self._writeback.add(namespace, digest, delay=replica * self._replica_delay)

    async def drop_upload(self, uid: str) -> None:
        """The blob arrived through another upload (or the disk is full): this one is useless."""
        try:
            await self.store.uploads.delete(uid)
        except UploadUnknown:
            pass
