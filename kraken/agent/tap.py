"""``twistd kraken-agent``: options and the composition root.

This is the only agent module that may import the global reactor, and only
inside ``makeService`` when no reactor is given.
"""

from __future__ import annotations

import os
from typing import Any

from treq.client import HTTPClient
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger

from kraken import config as kconfig
from kraken.agent.cleanup import Pins, agent_cleanup
from kraken.agent.config import AgentConfig
from kraken.agent.fromorigin import OriginStreams
from kraken.agent.http import AgentHTTP
from kraken.agent.mirror import Namespaced
from kraken.agent.source import AgentSource, LocalOrTracker, Mirror
from kraken.agent.streams import StreamingSource
from kraken.agent.upstreams import UpstreamNamespaces
from kraken.buildindex.client import BuildIndexes
from kraken.cluster.metrics import ServicesCollector
from kraken.cluster.services import ServiceAddress, ServiceHosts, describe
from kraken.core import PieceLengthRule
from kraken.net import make_http_client
from kraken.net.metrics import DiskCollector, Observation, cleanup_collector, counted, new_registry, observed
from kraken.net.server import listen_http, make_site
from kraken.net.tls import TLSContexts, server_side, wire
from kraken.origin.client import ClusterClient, origin_urls
from kraken.p2p.metrics import download_collector, scheduler_collector
from kraken.p2p.scheduler import Scheduler
from kraken.registry.http import RegistryAPI
from kraken.registry.routing import route_template
from kraken.store import CacheCleanup, CAStore
from kraken.tracker.client import Trackers
from kraken.workers import ThreadPoolService, ThreadWorker

log = Logger(namespace="kraken.agent")

READ_ONLY_MESSAGE = "this is a Kraken agent, a read-only registry: push to the Kraken proxy"


class Options(kconfig.DaemonOptions):
    synopsis = "[options]"
    longdesc = "Run a Kraken agent: the read-only registry on this host, fed by the P2P network."
    config_class = AgentConfig


def agent_service(config: AgentConfig, reactor: Any) -> MultiService:
    """Everything one agent needs, as a MultiService (the herd composes several).

    Children start in this order and stop in reverse: thread pools, the HTTP
    client pool, the scheduler, the cache cleanup (unless disabled), then the
    listeners (registry, agent API, P2P).
    """
    top = MultiService()
    top.setName("agent")
    tls = wire(config.tls, reactor, top)

    cpu = ThreadPoolService("cpu", 1, config.threads.cpu)  # piece hashing
    io = ThreadPoolService("io", 1, config.threads.io)
    cpu.setServiceParent(top)
    io.setServiceParent(top)
    io_worker = ThreadWorker(reactor, io.pool)

    store = _store(config, reactor, io_worker, ThreadWorker(reactor, cpu.pool))

    http, client_service = make_http_client(reactor, config.http_client, tls=tls)
    c = config.http_client
    client_service.setServiceParent(top)
    tracker = Trackers(_hosts(config.tracker, "tracker", config, reactor, top), http=http, clock=reactor, config=c)
    index = BuildIndexes(
        _hosts(config.build_index, "build-index", config, reactor, top), http=http, clock=reactor, config=c
    )

    scheduler = Scheduler(
        config.p2p, reactor=reactor, store=store, metainfo=tracker.metainfo, announcer=tracker.announce, tls=tls
    )
    scheduler.setName("scheduler")
    scheduler.setServiceParent(top)

    pins = Pins(store.touch)
    cleanup = _cleanup(config, scheduler, pins, io_worker, reactor)
    if cleanup is not None:
        cleanup.setServiceParent(top)

    observation = _observation(scheduler, tracker, index, reactor, config.store.root, cleanup)
    _registry_listener(
        config,
        _source(config, scheduler, index, io_worker, store, tracker, reactor, pins, http),
        reactor,
        None if tls is None else tls.public_server(),  # the host's runtime: TLS, no client certificate
        observation,
    ).setServiceParent(top)

    api = AgentHTTP(
        scheduler, pins=pins,
        cleanup=None if cleanup is None else lambda: dict(cleanup.counts),
    )  # fmt: skip
    _api_listener(config, api, reactor, tls, observation).setServiceParent(top)

    scheduler.listener(reactor, "agent P2P").setServiceParent(top)
    return top


def _store(config: AgentConfig, reactor: Any, io_worker: ThreadWorker, hash_worker: ThreadWorker) -> CAStore:
    return CAStore(
        config.store.root,
        worker=io_worker,
        hash_worker=hash_worker,
        # The agent never cuts blobs into pieces (metainfo comes from the origins); CAStore wants a rule anyway.
        piece_rule=PieceLengthRule.default(),
        now=reactor.seconds,
    )


def _api_listener(
    config: AgentConfig, api: AgentHTTP, reactor: Any, tls: TLSContexts | None, observation: Observation
) -> StreamServerEndpointService:
    """The agent API on ``listen_api`` (named ``api``)."""
    listener = listen_http(
        config.listen_api,
        make_site(observed(api.resource(), observation), reactor=reactor),
        reactor=reactor,
        component="agent API",
        tls=server_side(tls),
    )
    listener.setName("api")
    return listener


def _observation(
    scheduler: Scheduler, tracker: Trackers, index: BuildIndexes, reactor: Any, root: str, cleanup: CacheCleanup | None
) -> Observation:
    """``/metrics`` (the scheduler's series, both listeners' requests, the store's disk and cleanup) and
    ``/readiness`` (tracker and build-index answer)."""
    registry = new_registry()
    registry.register(scheduler_collector(scheduler.stats))
    registry.register(download_collector(scheduler.download_durations))
    if cleanup is not None:
        registry.register(cleanup_collector(lambda: cleanup.counts))
    registry.register(DiskCollector(root))
    registry.register(ServicesCollector([tracker.hosts, index.hosts]))
    checks = {"tracker": tracker.health, "build-index": index.health}
    return Observation(registry, checks, clock=reactor, route=route_template)


def _source(
    config: AgentConfig,
    scheduler: Scheduler,
    index: BuildIndexes,
    worker: ThreadWorker,
    store: CAStore,
    tracker: Trackers,
    reactor: Any,
    pins: Pins,
    http: HTTPClient,
) -> AgentSource:
    """The registry's source, a containerd mirror that never strands a pull: blob sizes from the cache or the
    tracker (a HEAD downloads nothing), every question to the tracker or build-index bounded by
    ``answer_timeout``."""
    return StreamingSource(
        scheduler,
        index,
        worker=worker,
        max_manifest_size=config.max_manifest_size,
        mirror=Mirror(LocalOrTracker(store.stat, tracker.metainfo), reactor, config.answer_timeout),
        pins=pins,
        from_origins=_from_origins(config, http, store, tracker, worker, reactor, scheduler),
    )


def _from_origins(
    config: AgentConfig,
    http: HTTPClient,
    store: CAStore,
    tracker: Trackers,
    worker: ThreadWorker,
    reactor: Any,
    scheduler: Scheduler,
) -> OriginStreams | None:
    """Blobs streamed from origins still fetching them (``stream_from_origins``; empty: None)."""
    if not config.stream_from_origins:
        return None
    origins = ClusterClient(
        http=http, origins=origin_urls(config.stream_from_origins), clock=reactor, config=config.http_client,
        worker=worker,
    )  # fmt: skip
    tmp = os.path.join(config.store.root, "tmp")  # emptied by the store at start
    return OriginStreams(
        origins, store, tmp, metainfo=tracker.metainfo, worker=worker, clock=reactor,
        timeout=config.http_client.timeout, installed=scheduler.seed,
    )  # fmt: skip


def _cleanup(
    config: AgentConfig, scheduler: Scheduler, pins: Pins, worker: ThreadWorker, reactor: Any
) -> CacheCleanup | None:
    """The cache cleanup (on unless ``cleanup.enabled: false``), after collecting stale partial downloads."""
    if config.cleanup.enabled is False:
        return None
    c = config.cleanup
    return agent_cleanup(c, config.store.root, scheduler=scheduler, pins=pins, worker=worker, clock=reactor)


def _hosts(value: ServiceAddress, kind: str, config: AgentConfig, reactor: Any, top: MultiService) -> ServiceHosts:
    """The trackers or build-index nodes ``value`` names, resolved (for DNS) by a child of ``top``."""
    hosts = ServiceHosts.from_config(value, reactor=reactor, http=config.http_client, kind=kind)
    hosts.attach(top)
    return hosts


def _registry_listener(
    config: AgentConfig,
    source: AgentSource,
    reactor: Any,
    tls: IOpenSSLServerConnectionCreator | None,
    observation: Observation,
) -> StreamServerEndpointService:
    """The agent's read-only registry API over ``source``, on ``listen_registry`` (named ``registry``), its
    requests counted in ``observation`` (``/metrics`` is the agent API's)."""
    registry = RegistryAPI(
        source,
        None,
        clock=reactor,
        read_only=True,
        read_only_message=READ_ONLY_MESSAGE,
        max_manifest_size=config.max_manifest_size,
    )
    listener = listen_http(
        config.listen_registry,
        make_site(
            counted(Namespaced(registry.resource(), UpstreamNamespaces(config.upstream_namespaces)), observation),
            reactor=reactor,
            not_utf8=registry.not_utf8(),
        ),
        reactor=reactor,
        component="agent registry",
        tls=tls,
        tracker=describe(config.tracker),
        build_index=describe(config.build_index),
    )
    listener.setName("registry")
    return listener


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return agent_service(options["parsed"], reactor)
