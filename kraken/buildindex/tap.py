"""``twistd kraken-build-index``: options and the composition root.

This is the only build-index module that may import the global reactor, and
only inside ``makeService`` when no reactor is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from kraken import config as kconfig
from kraken.buildindex.backends import TagBackends, build_tag_backends, sweep_scratch
from kraken.buildindex.client import BuildIndexClient
from kraken.buildindex.config import BuildIndexConfig
from kraken.buildindex.duplicate import Duplicator
from kraken.buildindex.http import BuildIndexHTTP
from kraken.buildindex.tags import TagStore, open_pool
from kraken.buildindex.writeback import TagWriteBack
from kraken.net import make_http_client
from kraken.net.server import listen_http, make_site
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
    duplicator, then the HTTP listener.
    """
    top = MultiService()
    top.setName("build-index")

    directory = os.path.dirname(os.path.abspath(config.database))
    os.makedirs(directory, exist_ok=True)
    tags = TagStore(open_pool(config.database, reactor), clock=reactor, max_page=config.max_page)
    tags.setServiceParent(top)

    backends: TagBackends | None = None
    threads = None
    if config.backends:
        threads = ThreadPoolService("io", 1, 4)
        threads.setServiceParent(top)

    http, client_service = make_http_client(reactor, config.http_client)
    client_service.setServiceParent(top)
    origin = ClusterClient(
        http=http, origins=origin_urls(config.origin), clock=reactor, config=config.http_client, worker=_NoFileWorker()
    )

    writeback = None
    if threads is not None:
        scratch = os.path.join(directory, "tag-scratch")
        os.makedirs(scratch, exist_ok=True)
        sweep_scratch(scratch)  # before the reactor runs: leftovers of a crash
        backends = build_tag_backends(
            config.backends, worker=ThreadWorker(reactor, threads.pool), clock=reactor, scratch=scratch, http=http
        )
        writeback = TagWriteBack(
            tags,
            backends,
            clock=reactor,
            concurrency=config.writeback.concurrency,
            backoff_min=config.writeback.backoff_min,
            backoff_max=config.writeback.backoff_max,
        )
        writeback.setServiceParent(top)

    duplicator = None
    neighbours = config.cluster.neighbours(config.listen_http)
    if neighbours:
        duplicator = Duplicator(
            [
                (url, BuildIndexClient(http=http, base=url, clock=reactor, config=config.http_client))
                for url in neighbours
            ],
            clock=reactor,
            stagger=config.cluster.duplicate_stagger,
            attempts=config.cluster.duplicate_attempts,
            backoff=config.cluster.duplicate_backoff,
        )
        duplicator.setServiceParent(top)
    if config.cluster.nodes:
        log.info(
            "build-index cluster: this node is {me}, duplicating tags to {neighbours}",
            me=config.cluster.self_url(config.listen_http),
            neighbours=neighbours,
        )

    app = BuildIndexHTTP(
        tags,
        origin,
        clock=reactor,
        max_manifest_size=config.max_manifest_size,
        max_page=config.max_page,
        max_references=config.max_references,
        backends=backends,
        writeback=writeback,
        duplicator=duplicator,
    )

    site = make_site(app.resource(), reactor=reactor)
    listen_http(
        config.listen_http,
        site,
        reactor=reactor,
        component="build-index",
        origin=config.origin,
        database=config.database,
    ).setServiceParent(top)
    return top


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return build_index_service(options["parsed"], reactor)
