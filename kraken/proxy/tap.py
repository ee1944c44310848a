"""``twistd kraken-proxy``: the composition root of the proxy."""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger

from kraken import config
from kraken.buildindex.client import BuildIndexes
from kraken.cluster.metrics import ServicesCollector
from kraken.cluster.services import ServiceHosts, describe
from kraken.net import make_http_client
from kraken.net.metrics import Observation, new_registry, observed
from kraken.net.server import listen_http, make_site
from kraken.net.tls import ReloadOnSIGHUP, TLSContexts, server_side
from kraken.origin.client import ClusterClient, origin_urls
from kraken.proxy.config import ProxyConfig
from kraken.proxy.http import beside, proxy_api, registry_auth
from kraken.proxy.limits import rate_limited
from kraken.proxy.preheat import PreheatAPI, Preheater
from kraken.proxy.source import ProxySource
from kraken.proxy.stage import Stager, StagerCollector
from kraken.registry.routing import route_template
from kraken.store import UploadArea, UploadExpiry
from kraken.workers import ThreadPoolService, ThreadWorker

log = Logger()


class Options(config.DaemonOptions):
    synopsis = "[options]"
    longdesc = "Run a Kraken proxy: the read-write registry that builders push to."
    config_class = ProxyConfig


def proxy_service(cfg: ProxyConfig, reactor: Any) -> MultiService:
    top = MultiService()
    tls = TLSContexts.from_config(cfg.tls)
    io = ThreadPoolService("proxy-io", 1, cfg.io_threads)
    io.setServiceParent(top)
    worker = ThreadWorker(reactor, io.pool)
    http, http_service = make_http_client(reactor, cfg.http_client, tls=tls)
    http_service.setServiceParent(top)

    os.makedirs(cfg.uploads.root, exist_ok=True)
    # No running hash: the origin checks every blob's digest before it stores it (ProxySource.commit_blob).
    uploads = UploadArea(cfg.uploads.root, worker, max_body=cfg.limits.max_blob_size or None, hashing=False)
    origin = ClusterClient(
        http=http, origins=origin_urls(cfg.origin), clock=reactor, config=cfg.http_client, worker=worker
    )
    index_hosts = ServiceHosts.from_config(cfg.build_index, reactor=reactor, http=cfg.http_client, kind="build-index")
    index_hosts.attach(top)
    index = BuildIndexes(index_hosts, http=http, clock=reactor, config=cfg.http_client)
    stager = None
    if cfg.uploads.stream_to_origin:
        stager = Stager(origin, uploads, clock=reactor, stall=float(cfg.uploads.stream_stall))
        uploads.tee, uploads.on_gone = stager.tee, stager.drop
    source = ProxySource(
        origin,
        index,
        worker=worker,
        scratch=cfg.uploads.root,
        check_concurrency=cfg.registry.check_concurrency,
        stager=stager,
    )
    gate = registry_auth(cfg.auth, clock=reactor, worker=worker)
    api = proxy_api(source, uploads, clock=reactor, config=cfg.registry, limits=cfg.limits, auth=gate)
    preheater = Preheater(origin, index, concurrency=cfg.preheat.concurrency)
    preheat = PreheatAPI(preheater, auth=gate, token=cfg.preheat.token())
    # SIGHUP reloads the TLS pair and the htpasswd file or token keys.
    reload = ReloadOnSIGHUP(tls, reactor, also=[gate] if gate is not None else [])
    reload.setServiceParent(top)

    UploadExpiry(api.expire_uploads, clock=reactor, ttl=cfg.uploads.ttl).setServiceParent(top)

    registry = new_registry()
    registry.register(ServicesCollector([index_hosts]))
    if stager is not None:
        registry.register(StagerCollector(stager))
    observation = Observation(
        registry, {"build-index": index.health, "origin": origin.health}, clock=reactor, route=route_template
    )
    site = make_site(
        observed(rate_limited(beside(api.resource(), preheat.resource()), cfg.limits, clock=reactor), observation),
        reactor=reactor,
        spool=uploads.spool,
        body_refused=api.body_refused,
        not_utf8=api.not_utf8(),
    )
    fields = {"origin": cfg.origin, "build_index": describe(cfg.build_index)}
    tls_server = server_side(tls)
    listen_http(cfg.listen_http, site, reactor=reactor, component="proxy", tls=tls_server, **fields).setServiceParent(
        top
    )
    return top


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    return proxy_service(options["parsed"], reactor)
