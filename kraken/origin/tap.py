"""``twistd kraken-origin``: options and the composition root.

This is the only origin module that may import the global reactor, and only
inside ``makeService`` when no reactor is given.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.logger import Logger

from kraken import config as kconfig
from kraken.backends import Router
from kraken.backends.config import build_router
from kraken.cluster.hosts import system_resolver
from kraken.core import Digest
from kraken.net import make_http_client
from kraken.net.server import listen_http, make_site
from kraken.origin.client import OriginClient
from kraken.origin.cluster import OriginRing, Repair, ReplicaBackend
from kraken.origin.config import OriginConfig
from kraken.origin.fetch import BlobFetcher
from kraken.origin.http import OriginHTTP
from kraken.origin.writeback import WriteBackQueue, open_pool
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


def origin_service(config: OriginConfig, reactor: Any) -> MultiService:
    """Everything one origin needs, as a MultiService (the herd composes it).

    Children start in this order and stop in reverse: thread pools, HTTP
    client pool, the cluster (ring, host list, health checks), the
    write-back queue (only with ``backends``), the fetcher (with
    ``backends`` or a ``cluster``: missing blobs come from the other origins,
    then the backend), upload expiry, the cache cleanup (when
    ``config.cleanup_enabled()``), the P2P scheduler, then the HTTP and P2P
    listeners.
    """
    top = MultiService()
    top.setName("origin")

    cpu = ThreadPoolService("cpu", 1, config.threads.cpu)  # piece hashing at commit
    io = ThreadPoolService("io", 1, config.threads.io)
    cpu.setServiceParent(top)
    io.setServiceParent(top)

    store = CAStore(
        config.store.root,
        worker=ThreadWorker(reactor, io.pool),
        hash_worker=ThreadWorker(reactor, cpu.pool),
        piece_rule=config.store.piece_rule(),
        now=reactor.seconds,
    )

    client, client_service = make_http_client(reactor, config.http_client)  # backends and the other origins
    client_service.setServiceParent(top)
    io_worker = ThreadWorker(reactor, io.pool)

    cluster_config = config.cluster
    # The other members, one attempt per call (a copy that fails is logged; the health checks retry anyway).
    once = attrs.evolve(config.http_client, retries=0)

    def client_for(member: str) -> OriginClient:
        url = cluster_config.url(member) if cluster_config is not None else f"http://{member}"
        return OriginClient(http=client, base=url, clock=reactor, config=once, worker=io_worker)

    def lost(why: str) -> None:
        if reactor.running:
            reactor.stop()

    ring = OriginRing(
        cluster_config,
        me=config.advertised(),
        clock=reactor,
        client_for=client_for,
        blob_path=store.blob_path,
        resolve=system_resolver(reactor),
        on_lost=lost,
    )
    ring.setServiceParent(top)

    writeback = None
    router = None
    if config.backends:
        router = build_router(config.backends, io_worker, reactor, http=client)
        # The origins share each backend's bandwidth limit: each takes 1/members of it.
        shared = router
        shared.share_bandwidth(len(ring.hosts.members()))
        ring.hosts.on_change(lambda members: shared.share_bandwidth(len(members)))
        writeback = WriteBackQueue(
            open_pool(config.writeback_database(), reactor),
            router=router,
            blob_path=store.blob_path,
            worker=io_worker,
            clock=reactor,
            concurrency=config.writeback.concurrency,
            backoff_min=config.writeback.backoff_min,
            backoff_max=config.writeback.backoff_max,
        )
        writeback.setServiceParent(top)

    # Fetch on miss: a blob asked for and not here comes from the other origins, then from its backend
    # (202 meanwhile).
    fetcher = None
    sources: Router | Repair | None = router
    if cluster_config is not None:
        replicas = ReplicaBackend(ring, worker=io_worker, clock=reactor, timeout=config.http_client.timeout)
        sources = Repair(replicas, router)
    if sources is not None:
        fetcher = BlobFetcher(store, sources, worker=io_worker, clock=reactor)
        fetcher.setServiceParent(top)

    UploadExpiry(store.uploads.expire, clock=reactor, ttl=config.upload_ttl).setServiceParent(top)

    if config.cleanup_enabled():
        if writeback is None:
            log.warn(
                "cache cleanup is enabled without backends: evicted blobs are gone for good",
                root=config.store.root,
            )
        CacheCleanup(
            config.store.root,
            worker=ThreadWorker(reactor, io.pool),
            clock=reactor,
            # A blob waiting for write-back is never evicted.
            keep=_keep_nothing if writeback is None else writeback.pending,
            interval=config.cleanup.interval,
            tti=config.cleanup.tti,
            aggressive_threshold=config.cleanup.aggressive_threshold,
            aggressive_tti=config.cleanup.aggressive_tti,
        ).setServiceParent(top)

    # Seeds only: no announcer, no downloads. A handshake for a blob that is not here starts a fetch on miss.
    scheduler = Scheduler(
        config.p2p, reactor=reactor, store=store, on_missing=None if fetcher is None else fetcher.fetching_for_peer
    )
    scheduler.setName("scheduler")
    scheduler.setServiceParent(top)

    on_commit = None
    if writeback is not None:
        queue = writeback

        async def on_commit(namespace: str, digest: Digest, replica: int = 0) -> None:
            await queue.add(namespace, digest, delay=replica * config.writeback.replica_delay)

    def extra_stats() -> dict[str, object]:
        extra: dict[str, object] = {"cluster": attrs.asdict(ring.stats())}
        if writeback is not None:
            extra["writeback"] = attrs.asdict(writeback.stats())
        return extra

    app = OriginHTTP(
        store,
        clock=reactor,
        advertise=config.advertised(),
        peer=scheduler.me,  # OriginHTTP marks it complete and an origin
        p2p_stats=scheduler.stats,
        on_commit=on_commit,
        fetcher=fetcher,
        locations=ring.locations,
        replicate=ring.replicate,
        extra_stats=extra_stats,
    )

    site = make_site(app.resource(), reactor=reactor, spool=store.uploads.spool, body_refused=app.body_refused)
    listen_http(
        config.listen_http,
        site,
        reactor=reactor,
        component="origin",
        advertise=config.advertised(),
        root=config.store.root,
    ).setServiceParent(top)
    scheduler.listener(reactor, "origin P2P").setServiceParent(top)
    return top


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return origin_service(options["parsed"], reactor)
