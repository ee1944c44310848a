"""``twistd kraken-build-index``: options and the composition root.

This is the only build-index module that may import the global reactor, and
only inside ``makeService`` when no reactor is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from treq.client import HTTPClient
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from kraken import config as kconfig
from kraken.buildindex.archive import TagArchive, build_tag_archive, sweep_scratch
from kraken.buildindex.client import BuildIndexClient
from kraken.buildindex.config import BuildIndexConfig
from kraken.buildindex.duplicate import Duplicator
from kraken.buildindex.http import BuildIndexHTTP
from kraken.buildindex.index import TagIndex
from kraken.buildindex.metrics import register_build_index
from kraken.buildindex.outbox import NODE
from kraken.buildindex.tags import TagStore, open_pool
from kraken.buildindex.wiring import build_replicator
from kraken.buildindex.writeback import TagWriteBack
from kraken.net import make_http_client
from kraken.net.metrics import Observation, new_registry, observed
from kraken.net.server import listen_http, make_site
from kraken.net.tls import server_side, wire
from kraken.origin.client import ClusterClient, origin_urls
from kraken.workers import ThreadPoolService, ThreadWorker

log = Logger(namespace="kraken.buildindex")


class Options(kconfig.DaemonOptions):
    synopsis = "[options]"
    longdesc = "Run a Kraken build-index: tags, manifest records and listings, checked against the origin."
    config_class = BuildIndexConfig


class _NoFileWorker:
    """The origin client's worker reads files being uploaded; the
    build-index never uploads, so it gets a worker that refuses."""

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        return fail(RuntimeError("the build-index does no file I/O"))


def build_index_service(config: BuildIndexConfig, reactor: Any) -> MultiService:
    """Everything one build-index needs, as a MultiService (the herd composes it).

    Children start in this order and stop in reverse: the tag store (its
    SQLite pool), with ``backends`` an I/O thread pool, the HTTP client
    pool, with ``backends`` the write-back loop, with ``cluster.nodes`` the
    duplicator, with ``remotes`` their HTTP client pools and the replicator,
    then the HTTP listener.
    """
    top = MultiService()
    top.setName("build-index")
    tls = wire(config.tls, reactor, top)
    directory = os.path.dirname(os.path.abspath(config.database))
    os.makedirs(directory, exist_ok=True)
    tags = TagStore(open_pool(config.database, reactor), clock=reactor, max_page=config.max_page)
    tags.setServiceParent(top)
    threads = None
    if config.backends or config.remotes:
        threads = ThreadPoolService("io", 1, 4)
        threads.setServiceParent(top)
    http, client_service = make_http_client(reactor, config.http_client, tls=tls)
    client_service.setServiceParent(top)
    origin = ClusterClient(
        http=http, origins=origin_urls(config.origin), clock=reactor, config=config.http_client, worker=_NoFileWorker()
    )
    worker = None if threads is None else ThreadWorker(reactor, threads.pool)
    archive = None if worker is None or not config.backends else _archive(config, reactor, directory, worker, http)
    writeback = None if archive is None else _writeback(config, reactor, tags, archive)
    duplicator = _duplicator(config, reactor, http, tags)
    replicator = None
    if worker is not None and config.remotes:
        replicator = build_replicator(config, reactor, top, tags, origin, worker=worker, tls=tls)
    for service in (writeback, duplicator, replicator):
        if service is not None:
            service.setServiceParent(top)

    limits = {"max_manifest_size": config.max_manifest_size, "max_page": config.max_page}
    index = TagIndex(
        tags, origin, **limits, max_references=config.max_references, archive=archive, writeback=writeback,
        duplicator=duplicator, replicator=replicator,
    )  # fmt: skip
    registry = new_registry()
    refresh = register_build_index(registry, writeback, duplicator, replicator)
    checks = {"database": index.healthy, "origin": origin.health}
    observation = Observation(registry, checks, clock=reactor, refresh=refresh)
    site = make_site(observed(BuildIndexHTTP(index, replicator).resource(), observation), reactor=reactor)
    fields = {"origin": config.origin, "database": config.database}
    listen_http(
        config.listen_http, site, reactor=reactor, component="build-index", tls=server_side(tls), **fields
    ).setServiceParent(top)
    return top


def _archive(
    config: BuildIndexConfig, reactor: Any, directory: str, worker: ThreadWorker, http: HTTPClient
) -> TagArchive:
    """The tag archive (``backends``), its link files passing through ``<database directory>/tag-scratch``."""
    scratch = os.path.join(directory, "tag-scratch")
    os.makedirs(scratch, exist_ok=True)
    sweep_scratch(scratch)  # before the reactor runs: leftovers of a crash
    return build_tag_archive(config.backends, worker=worker, clock=reactor, scratch=scratch, http=http)


def _writeback(config: BuildIndexConfig, reactor: Any, tags: TagStore, archive: TagArchive) -> TagWriteBack:
    return TagWriteBack(
        tags,
        archive,
        clock=reactor,
        concurrency=config.writeback.concurrency,
        backoff_min=config.writeback.backoff_min,
        backoff_max=config.writeback.backoff_max,
    )


def _duplicator(config: BuildIndexConfig, reactor: Any, http: HTTPClient, tags: TagStore) -> Duplicator | None:
    """With ``cluster.nodes``: the duplicator to the other nodes (None when this node is alone)."""
    neighbours = config.cluster.neighbours(config.listen_http)
    duplicator = None
    if neighbours:
        clients = [
            (url, BuildIndexClient(http=http, base=url, clock=reactor, config=config.http_client)) for url in neighbours
        ]
        duplicator = Duplicator(
            clients,
            tags.outbox(NODE),
            clock=reactor,
            stagger=config.cluster.duplicate_stagger,
            attempts=config.cluster.duplicate_attempts,
            backoff=config.cluster.duplicate_backoff,
            backoff_max=config.cluster.duplicate_backoff_max,
        )
    if config.cluster.nodes:
        log.info(
            "build-index cluster: this node is {me}, duplicating tags to {neighbours}",
            me=config.cluster.self_url(config.listen_http),
            neighbours=neighbours,
        )
    return duplicator


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return build_index_service(options["parsed"], reactor)
