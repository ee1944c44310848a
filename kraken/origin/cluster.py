"""This origin's place in the origin cluster: the ring, its members' health, replication.

``OriginRing`` is a Service holding:

- the members (``kraken.cluster.hosts.HostList``: the ``cluster.hosts``
  list, or the ``cluster.dns`` name resolved every ``refresh_interval``);
  without a ``cluster`` section the ring is this origin alone;
- their health (``kraken.cluster.health.HealthFilter``: ``GET /health`` on
  every member each ``refresh_interval``);
- the ring over them (``kraken.cluster.ring.Ring``), rebuilt when the
  members change.

``locations(digest)`` is what ``GET /blobs/<digest>/locations`` answers:
the healthy members of the blob's placement, best first (see
``Ring.locations``). ``replicate(namespace, digest)`` copies a blob this
origin has just committed to the other healthy members of its placement,
all at once, each as replica k = 1, 2... (``OriginClient.upload(replica=k)``);
a member that already holds it answers 409, which counts as success. A
failed copy is logged and counted and does not fail anything: the upload was
committed here, and is written back from here.

An origin must find itself among the members (as its ``advertise``
address). A static list that does not name it is a config error (checked at
load time). A DNS list is checked when it first resolves, which must happen
within ``find_self_timeout`` seconds of the start: otherwise, or if the
answer does not name this origin, ``on_lost`` is called (the tap stops the
origin's own service, never the reactor: in the herd it is every daemon's;
a standalone origin then exits, as Kraken's origin does).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from kraken.backends import (
    BackendError,
    BackendUnavailable,
    BlobInfo,
    BlobNotFound,
    IBackend,
    ListPage,
    NoBackend,
    Router,
)
from kraken.backends.remote import Discard, stream_to_file
from kraken.cluster.config import ClusterConfig
from kraken.cluster.health import HealthFilter
from kraken.cluster.hosts import HostList, Resolver
from kraken.cluster.ring import Ring
from kraken.core import Digest
from kraken.origin.client import LOCAL_HEADER, OriginClient
from kraken.store.growing import GrowingFile
from kraken.workers import Worker

#: How long a DNS-listed origin may wait for a resolution that names it before it gives up.
FIND_SELF_TIMEOUT = 60.0


@attrs.define
class ClusterStats:
    """Counters since the origin started."""

    members: int = 0  # members now
    unhealthy: int = 0  # of them, marked unhealthy now
    replicated: int = 0  # copies sent to (or already held by) a replica
    replica_failures: int = 0  # copies that failed


class OriginRing(MultiService):
    """See the module docstring. ``client_for(member)`` is the single-origin
    client of a member ("host:port"), for health checks and copies;
    ``blob_path`` and ``blob_size`` find a committed blob in the store."""

    log = Logger()

    def __init__(
        self,
        config: ClusterConfig | None,
        *,
        me: str,
        clock: IReactorTime,
        client_for: Callable[[str], OriginClient],
        blob_path: Callable[[Digest], str],
        resolve: Resolver | None = None,
        on_lost: Callable[[str], None] | None = None,
        find_self_timeout: float = FIND_SELF_TIMEOUT,
    ) -> None:
        super().__init__()
        self.setName("cluster")
        self._me = me
        self._clock = clock
        self._client_for = client_for
        self._blob_path = blob_path
        self._on_lost = on_lost
        self._find_self_timeout = find_self_timeout
        self._stats = ClusterStats()
        self._finding: Deferred[tuple[str, ...]] | None = None
        if config is None:
            self.hosts = HostList(clock=clock, hosts=[me])
            self.health = HealthFilter(self._check, clock=clock, members=self.hosts.members)
            self._replicas = 1
        else:
            self.hosts = HostList.from_config(config, clock=clock, resolve=resolve)
            self.health = HealthFilter.from_config(config, self._check, clock=clock, members=self.hosts.members)
            self._replicas = config.replicas
        self.ring = Ring(self.hosts.members(), self._replicas)
        self.hosts.on_change(self._members_changed)
        self.hosts.setServiceParent(self)
        if config is not None:
            self.health.setServiceParent(self)  # a ring of one is never checked

    @property
    def me(self) -> str:
        return self._me

    async def _check(self, member: str) -> bool:
        if member == self._me:
            return True  # it answers this very question
        return await self._client_for(member).health()

    def _members_changed(self, members: tuple[str, ...]) -> None:
        self.ring = Ring(members, self._replicas)
        if self._me not in members:
            self.log.error(
                "this origin ({me}) is not among the cluster's members {members}: it holds blobs the ring"
                " does not place here",
                me=self._me,
                members=list(members),
            )

    # -- the service --

    def startService(self) -> None:
        super().startService()
        if self.hosts.static:
            return
        finding = self.hosts.when_members()
        finding.addTimeout(self._find_self_timeout, self._clock)
        self._finding = finding
        finding.addCallbacks(self._found, self._not_found)

    def stopService(self) -> Deferred[None] | None:
        if self._finding is not None:
            finding, self._finding = self._finding, None
            finding.cancel()
        result: Deferred[None] | None = super().stopService()
        return result

    def _found(self, members: tuple[str, ...]) -> None:
        self._finding = None
        if self._me not in members:
            self._lost(f"the cluster's members {list(members)} do not include this origin ({self._me})")

    def _not_found(self, failure: object) -> None:
        if self._finding is None:
            return  # stopping
        self._finding = None
        self._lost(f"the cluster's DNS name gave no members within {self._find_self_timeout:.0f}s")

    def _lost(self, why: str) -> None:
        self.log.critical("origin cannot join its cluster: {why}; set advertise to its address in the ring", why=why)
        if self._on_lost is not None:
            self._on_lost(why)

    # -- placement --

    def locations(self, digest: Digest) -> list[str]:
        """Where clients should go for ``digest`` now, best first."""
        return self.ring.locations(digest, self.health.healthy)

    def client_for(self, member: str) -> OriginClient:
        return self._client_for(member)

    def candidates(self, digest: Digest) -> list[str]:
        """Where another copy of ``digest`` may be: the healthy members among its first ``2 x replicas``
        owners other than this origin, in ring order."""
        owners = self.ring.owners(digest)[: 2 * self._replicas]
        return [m for m in owners if m != self._me and self.health.healthy(m)]

    def mine(self, digest: Digest) -> bool:
        """Whether this origin is one of the members that hold ``digest``."""
        return self._me is not None and self.ring.owns(self._me, digest)

    def others(self, digest: Digest) -> list[str]:
        """The healthy members of the blob's placement other than this origin, in ring order."""
        return [m for m in self.ring.placement(digest) if m != self._me and self.health.healthy(m)]

    def stats(self) -> ClusterStats:
        return attrs.evolve(self._stats, members=len(self.ring), unhealthy=len(self.health.unhealthy()))

    # -- replication --

    async def replicate(self, namespace: str, digest: Digest, size: int) -> None:
        """Copy a blob just committed here to the other members of its
        placement, all at once; never raises (failures are logged and counted)."""
        others = self.others(digest)
        if not others:
            return
        copies = [
            Deferred.fromCoroutine(self._copy(member, k, namespace, digest, size))
            for k, member in enumerate(others, start=1)
        ]
        await gatherResults(copies, consumeErrors=True)

    async def _copy(self, member: str, k: int, namespace: str, digest: Digest, size: int) -> None:
        try:
            await self._client_for(member).upload(namespace, digest, self._blob_path(digest), size, replica=k)
        except CancelledError:
            raise
        except Exception as e:
            self._stats.replica_failures += 1
            self.log.warn(
                "copying {digest} to replica {member} failed: {error}",
                digest=str(digest),
                member=member,
                error=str(e) or type(e).__name__,
                namespace=namespace,
            )
            return
        self._stats.replicated += 1
        self.log.info("copied {digest} to replica {member}", digest=str(digest), member=member, namespace=namespace)


# -- repair: a member that lacks a blob gets it from the others ---------------


def _hex_digest(name: str) -> Digest:
    return Digest(name)  # the bare hex; its length tells sha256 from sha512


@implementer(IBackend)
class ReplicaBackend:
    """The other origins, as a read-only backend of the fetcher: an origin
    asked for a blob it lacks (it was down when the blob was copied, or its
    disk was replaced) fetches it from another member before answering 404.

    ``stat`` asks the other healthy members among the blob's first
    ``2 x replicas`` owners, in ring order (the placement, then where an
    upload lands when the placement is down), with ``Kraken-Local`` so that
    they answer from their stores and never start a fetch of their own. The
    first that holds it is remembered for the ``download``. Nobody has it:
    ``BlobNotFound``; nobody answered: ``BackendUnavailable``."""

    def __init__(self, ring: OriginRing, *, worker: Worker, clock: IReactorTime, timeout: float) -> None:
        self._ring = ring
        self._worker = worker
        self._clock = clock
        self._timeout = timeout
        self._holders: dict[str, str] = {}  # name -> the member that said it holds it

    async def stat(self, namespace: str, name: str) -> BlobInfo:
        digest = _hex_digest(name)
        failed = None
        for member in self._ring.candidates(digest):
            try:
                size = await self._ring.client_for(member).stat(namespace, digest, local=True)
            except CancelledError:
                raise
            except Exception as e:
                failed = e
                continue
            if size is not None:
                self._holders[name] = member
                return BlobInfo(size)
        if failed is not None:
            raise BackendUnavailable(f"no other origin answered about {digest}: {failed}")
        raise BlobNotFound(namespace, name)

    async def download(self, namespace: str, name: str, path: str) -> None:
        member = self._holders.pop(name, None)
        if member is None:
            await self.stat(namespace, name)
            member = self._holders.pop(name)
        digest = _hex_digest(name)
        client = self._ring.client_for(member)
        try:
            response = await client.get(namespace, digest, headers={LOCAL_HEADER: [b"1"]})
        except CancelledError:
            raise
        except Exception as e:
            raise BackendUnavailable(f"origin {member}: {e}") from None
        if response.code != 200:
            response.deliverBody(Discard())
            if response.code == 404:
                raise BlobNotFound(namespace, name)
            raise BackendUnavailable(f"origin {member} answered {response.code} for {digest}")
        await stream_to_file(
            response, path, worker=self._worker, clock=self._clock, timeout=self._timeout, prefix=".repair-"
        )
        self._ring.log.info("fetched {digest} from origin {member}", digest=str(digest), member=member)

    async def upload(self, namespace: str, name: str, path: str) -> None:
        raise BackendError("the other origins are a read-only source")

    async def list(self, prefix: str = "", *, continuation: str | None = None, limit: int = 1000) -> ListPage:
        return ListPage((), None)


@implementer(IBackend)
class _FirstOf:
    """Read-only: the first source that has a blob (the other origins, then the namespace's backend)."""

    def __init__(self, sources: list[IBackend]) -> None:
        self._sources = sources
        self._chosen: dict[str, IBackend] = {}

    async def stat(self, namespace: str, name: str) -> BlobInfo:
        unavailable: BackendUnavailable | None = None
        for source in self._sources:
            try:
                info = await source.stat(namespace, name)
            except BlobNotFound:
                continue
            except BackendUnavailable as e:
                unavailable = e
                continue
            self._chosen[name] = source
            return info
        if unavailable is not None:
            raise unavailable
        raise BlobNotFound(namespace, name)

    async def _choose(self, namespace: str, name: str) -> IBackend:
        source = self._chosen.pop(name, None)
        if source is None:
            await self.stat(namespace, name)
            source = self._chosen.pop(name)
        return source

    async def download(self, namespace: str, name: str, path: str) -> None:
        await (await self._choose(namespace, name)).download(namespace, name, path)

    async def download_growing(self, namespace: str, name: str, path: str, growing: GrowingFile | None) -> None:
        """``download``, telling ``growing`` each byte on disk if the source can (a ``registry`` backend); for one
        that cannot (another origin), ``growing`` ends at once for its readers, who take the usual path."""
        source = await self._choose(namespace, name)
        progressive = getattr(source, "download_growing", None)
        if progressive is not None:
            await progressive(namespace, name, path, growing)
            return
        if growing is not None:
            growing.end(BackendError("this source does not tell its progress"))
        await source.download(namespace, name, path)

    async def upload(self, namespace: str, name: str, path: str) -> None:
        raise BackendError("fetch on miss only reads")

    async def list(self, prefix: str = "", *, continuation: str | None = None, limit: int = 1000) -> ListPage:
        return ListPage((), None)


class Repair:
    """The fetcher's sources in a cluster: the other origins first, then the namespace's backend (if any)."""

    def __init__(self, replicas: ReplicaBackend, router: Router | None) -> None:
        self._replicas = replicas
        self._router = router

    @property
    def has_backends(self) -> bool:
        return self._router is not None

    def backend_for(self, namespace: str) -> IBackend:
        if self._router is None:
            return self._replicas
        try:
            backend = self._router.backend_for(namespace)
        except NoBackend:
            return self._replicas
        return _FirstOf([self._replicas, backend])
