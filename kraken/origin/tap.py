"""``twistd kraken-origin``: options and the composition root.

This is the only origin module that may import the global reactor, and only
inside ``makeService`` when no reactor is given.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.application.service import MultiService
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kraken import config as kconfig
from kraken.backends import Router
from kraken.backends.config import build_router
from kraken.cluster.hosts import system_resolver
from kraken.core import Digest
from kraken.net import make_http_client
from kraken.net.metrics import DiskCollector, Observation, QueueCollector, cleanup_collector, new_registry, observed
from kraken.net.server import listen_http, make_site
from kraken.net.tls import TLSContexts, server_side, wire
from kraken.origin.client import OriginClient
from kraken.origin.cluster import OriginRing, Repair, ReplicaBackend
from kraken.origin.config import OriginConfig
from kraken.origin.fetch import BlobFetcher
from kraken.origin.http import OriginHTTP
from kraken.origin.metrics import found_itself, register_origin, store_writable
from kraken.origin.node import OriginNode
from kraken.origin.repair import RingRepair, RingView
from kraken.origin.writeback import WriteBackQueue, open_pool
from kraken.p2p.metrics import download_collector, scheduler_collector
from kraken.p2p.scheduler import Scheduler
from kraken.store import CacheCleanup, CAStore, UploadExpiry
from kraken.workers import ThreadPoolService, ThreadWorker

log = Logger(namespace="kraken.origin")


class Options(kconfig.DaemonOptions):
    synopsis = "[options]"
    longdesc = "Run a Kraken origin: the seeder and content-addressed blob store."
    config_class = OriginConfig


def _keep_nothing(digest: Digest) -> bool:
    return False


def origin_service(
    config: OriginConfig, reactor: Any, *, on_given_up: Callable[[], object] | None = None
) -> MultiService:
    """Everything one origin needs, as a MultiService (the herd composes it).

    Children start in this order and stop in reverse: thread pools, HTTP
    client pool, the cluster (ring, host list, health checks), the
    write-back queue (only with ``backends``), the fetcher (with
    ``backends`` or a ``cluster``: missing blobs come from the other origins,
    then the backend), upload expiry, the cache cleanup (when
    ``config.cleanup_enabled()``), the ring repair (in a cluster), the P2P scheduler, then the HTTP and P2P
    listeners. An origin that cannot join its cluster stops this service,
    and only this one (``_give_up``), then calls ``on_given_up``.
    """
    top = MultiService()
    top.setName("origin")
    tls = wire(config.tls, reactor, top)
    store, io_worker = _store(config, reactor, top)
    client, peers = _clients(config, reactor, tls, top)
    ring = _ring(config, reactor, peers, io_worker, store, lost=partial(_give_up, top, reactor, on_given_up))
    ring.setServiceParent(top)
    router = None if not config.backends else build_router(config.backends, io_worker, reactor, http=client)
    writeback = None if router is None else _writeback(config, reactor, router, ring, io_worker, store)
    fetcher = _fetcher(config, reactor, router, ring, io_worker, store)
    cleanup = _cleanup(config, reactor, io_worker, writeback) if config.cleanup_enabled() else None
    expiry = UploadExpiry(store.uploads.expire, clock=reactor, ttl=config.upload_ttl)
    for service in (writeback, fetcher, expiry, cleanup):
        if service is not None:
            service.setServiceParent(top)
    repair = _repair(config, reactor, ring, io_worker, store, writeback)
    if repair is not None:
        repair.setServiceParent(top)

    node = OriginNode(
        store,
        advertise=config.advertised(),
        fetcher=fetcher,
        placement=ring,
        writeback=writeback,
        replica_delay=config.writeback.replica_delay,
        repair=repair,
    )
    # Seeds only: no announcer, no downloads. A handshake for a blob that is not here starts a fetch on miss.
    scheduler = Scheduler(
        config.p2p, reactor=reactor, store=store, on_missing=None if fetcher is None else node.on_missing, tls=tls
    )
    scheduler.setName("scheduler")
    scheduler.setServiceParent(top)
    node.seeds_as(scheduler.me, scheduler.stats)

    app = OriginHTTP(node, reads=io_worker, streams=config.fetch_streams)
    observation = _observation(config, reactor, node, scheduler, ring, io_worker, cleanup, writeback)
    resource = observed(app.resource(), observation)
    site = make_site(resource, reactor=reactor, spool=store.uploads.spool, body_refused=app.body_refused)
    fields = {"advertise": config.advertised(), "root": config.store.root}
    listen_http(
        config.listen_http, site, reactor=reactor, component="origin", tls=server_side(tls), **fields
    ).setServiceParent(top)
    scheduler.listener(reactor, "origin P2P").setServiceParent(top)
    return top


def _observation(
    config: OriginConfig,
    reactor: Any,
    node: OriginNode,
    scheduler: Scheduler,
    ring: OriginRing,
    worker: ThreadWorker,
    cleanup: CacheCleanup | None,
    writeback: WriteBackQueue | None,
) -> Observation:
    """``/metrics`` (the P2P side's series, the node's, the cache cleanup's) and ``/readiness`` (store writable,
    ring found itself)."""
    registry = new_registry()
    registry.register(scheduler_collector(scheduler.stats))
    registry.register(download_collector(scheduler.download_durations))
    if cleanup is not None:
        registry.register(cleanup_collector(lambda: cleanup.counts))
    register_origin(registry, node.stats)
    registry.register(DiskCollector(config.store.root))
    checks = {"store": store_writable(config.store.root, worker), "ring": found_itself(ring.me, ring.hosts.members)}
    if writeback is None:
        return Observation(registry, checks, clock=reactor)
    queue = QueueCollector("kraken_origin_writeback", "Write-back", writeback.backlog, depth=False)
    registry.register(queue)
    return Observation(registry, checks, clock=reactor, refresh=[queue.refresh])


def _clients(
    config: OriginConfig, reactor: Any, tls: TLSContexts | None, top: MultiService
) -> tuple[HTTPClient, HTTPClient]:
    """The HTTP clients: for the backends (the system's trust roots) and for the other origins (the cluster's
    TLS: the same client without a ``tls`` block)."""
    client, client_service = make_http_client(reactor, config.http_client)
    client_service.setServiceParent(top)
    if tls is None:
        return client, client
    peers, peers_service = make_http_client(reactor, config.http_client, tls=tls)
    peers_service.setName("http-client-cluster")
    peers_service.setServiceParent(top)
    return client, peers


def _store(config: OriginConfig, reactor: Any, top: MultiService) -> tuple[CAStore, ThreadWorker]:
    """The store, over its thread pools (which start first); and the I/O pool's worker."""
    cpu = ThreadPoolService("cpu", 1, config.threads.cpu)  # piece hashing at commit
    io = ThreadPoolService("io", 1, config.threads.io)
    cpu.setServiceParent(top)
    io.setServiceParent(top)
    io_worker = ThreadWorker(reactor, io.pool)
    store = CAStore(
        config.store.root,
        worker=io_worker,
        hash_worker=ThreadWorker(reactor, cpu.pool),
        piece_rule=config.store.piece_rule(),
        now=reactor.seconds,
    )
    return store, io_worker


def _ring(
    config: OriginConfig,
    reactor: Any,
    client: HTTPClient,
    worker: ThreadWorker,
    store: CAStore,
    lost: Callable[[str], None],
) -> OriginRing:
    """The cluster: this origin alone without a ``cluster`` section."""
    cluster = config.cluster
    # The other members, one attempt per call (a copy that fails is logged; the health checks retry anyway).
    once = attrs.evolve(config.http_client, retries=0)

    def client_for(member: str) -> OriginClient:
        url = cluster.url(member) if cluster is not None else f"http://{member}"
        return OriginClient(http=client, base=url, clock=reactor, config=once, worker=worker)

    return OriginRing(
        cluster,
        me=config.advertised(),
        clock=reactor,
        client_for=client_for,
        blob_path=store.blob_path,
        resolve=system_resolver(reactor),
        on_lost=lost,
    )


def _writeback(
    config: OriginConfig, reactor: Any, router: Router, ring: OriginRing, worker: ThreadWorker, store: CAStore
) -> WriteBackQueue:
    """The durable write-back queue; the origins share each backend's bandwidth limit: each takes 1/members of it."""
    router.share_bandwidth(len(ring.hosts.members()))
    ring.hosts.on_change(lambda members: router.share_bandwidth(len(members)))
    return WriteBackQueue(
        open_pool(config.writeback_database(), reactor),
        router=router,
        blob_path=store.blob_path,
        worker=worker,
        clock=reactor,
        concurrency=config.writeback.concurrency,
        backoff_min=config.writeback.backoff_min,
        backoff_max=config.writeback.backoff_max,
    )


def _fetcher(
    config: OriginConfig, reactor: Any, router: Router | None, ring: OriginRing, worker: ThreadWorker, store: CAStore
) -> BlobFetcher | None:
    """Fetch on miss: a blob asked for and not here comes from the other origins (repair), then from its backend."""
    sources: Router | Repair | None = router
    if config.cluster is not None:
        replicas = ReplicaBackend(ring, worker=worker, clock=reactor, timeout=config.http_client.timeout)
        sources = Repair(replicas, router)
    if sources is None:
        return None
    return BlobFetcher(store, sources, worker=worker, clock=reactor, hold=config.fetch_hold)


def _repair(
    config: OriginConfig,
    reactor: Any,
    ring: OriginRing,
    worker: ThreadWorker,
    store: CAStore,
    writeback: WriteBackQueue | None,
) -> RingRepair | None:
    """Background repair of the ring (``kraken.origin.repair``): only in a cluster, unless switched off."""
    if config.cluster is None or not config.repair.enabled:
        return None
    view = RingView(
        me=config.advertised(),
        placement=lambda digest: ring.ring.placement(digest),
        healthy=ring.health.healthy,
        client_for=ring.client_for,
        namespaces=(lambda digest: []) if writeback is None else writeback.namespaces,
    )
    repair = RingRepair(config.repair, view, store=store, root=config.store.root, worker=worker, clock=reactor)
    ring.hosts.on_change(repair.members_changed)
    ring.health.on_change(repair.health_changed)
    return repair


def _cleanup(
    config: OriginConfig, reactor: Any, worker: ThreadWorker, writeback: WriteBackQueue | None
) -> CacheCleanup:
    if writeback is None:
        log.warn("cache cleanup is enabled without backends: evicted blobs are gone for good", root=config.store.root)
    return CacheCleanup(
        config.store.root,
        worker=worker,
        clock=reactor,
        # A blob waiting for write-back is never evicted.
        keep=_keep_nothing if writeback is None else writeback.pending,
        interval=config.cleanup.interval,
        tti=config.cleanup.tti,
        aggressive_threshold=config.cleanup.aggressive_threshold,
        aggressive_tti=config.cleanup.aggressive_tti,
    )


def _give_up(top: MultiService, clock: IReactorTime, then: Callable[[], object] | None, why: str) -> None:
    """The origin cannot run (it is not among its cluster's members): stop its own service, never the reactor,
    which in the herd is every daemon's. On the next turn, so that a service starting its children is not
    stopped halfway."""

    def stop() -> None:
        if not top.running:
            return  # stopping anyway
        log.critical("origin stopping its own service: {why}", why=why)
        stopping = maybeDeferred(top.disownServiceParent if top.parent is not None else top.stopService)
        if then is not None:
            stopping.addBoth(lambda _: then())

    clock.callLater(0, stop)


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor

    def exit_process() -> None:
        # Alone in its process, an origin that gave up leaves nothing to run: exit (its supervisor restarts it).
        if reactor.running:
            reactor.stop()

    return origin_service(options["parsed"], reactor, on_given_up=exit_process)
