"""``twistd kraken-tracker``: options and the composition root.

This is the only tracker module that may import the global reactor, and
only inside ``makeService`` when no reactor is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from kraken import config as kconfig
from kraken.net import make_http_client
from kraken.net.metrics import Observation, new_registry, observed
from kraken.net.server import listen_http, make_site
from kraken.net.tls import server_side, wire
from kraken.origin.client import ClusterClient, origin_urls
from kraken.tracker.config import TrackerConfig
from kraken.tracker.http import TrackerHTTP
from kraken.tracker.lean import lean_announces
from kraken.tracker.origins import OriginPeers
from kraken.tracker.redis_peers import peer_store
from kraken.tracker.stats import register_tracker, with_stats
from kraken.tracker.swarmview import swarm_route, with_swarms

log = Logger(namespace="kraken.tracker")


class Options(kconfig.DaemonOptions):
    synopsis = "[options]"
    longdesc = "Run a Kraken tracker: takes announces, hands out peers, serves metainfo from the origins."
    config_class = TrackerConfig


class _NoFileWorker:
    """The origin client's worker reads files being uploaded; the tracker
    never uploads, so it gets a worker that refuses."""

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        return fail(RuntimeError("the tracker does no file I/O"))


def tracker_service(config: TrackerConfig, reactor: Any) -> MultiService:
    """Everything one tracker needs, as a MultiService (the herd will compose it).

    Children start in this order and stop in reverse: the peer store (its
    expiry sweep), the HTTP client pool, then the HTTP listener.
    """
    top = MultiService()
    top.setName("tracker")
    tls = wire(config.tls, reactor, top)

    store = peer_store(config, reactor)
    store.setServiceParent(top)

    http, client_service = make_http_client(reactor, config.http_client, tls=tls)
    client_service.setServiceParent(top)
    origin = ClusterClient(
        http=http, origins=origin_urls(config.origin), clock=reactor, config=config.http_client, worker=_NoFileWorker()
    )

    app = TrackerHTTP(
        store,
        origin,
        clock=reactor,
        announce_interval=config.announce_interval,
        max_peers=config.max_peers,
        origin_peers=OriginPeers(
            origin, clock=reactor, ttl=config.origin_peers_cache_ttl, size=config.origin_peers_cache_size
        ),
        metainfo_cache_ttl=config.metainfo_cache_ttl,
        metainfo_cache_size=config.metainfo_cache_size,
    )

    registry = new_registry()
    register_tracker(registry, store, app)
    # Ready when an origin answers. A Redis outage leaves it ready: it serves from its local copy (degraded).
    observation = Observation(
        registry, {"origin": origin.health}, clock=reactor, exact=frozenset({"/announce"}), route=swarm_route
    )
    # The live swarm page counts a report as current for two announce intervals (kraken.tracker.swarmview).
    swarms = with_swarms(app.resource(), store, clock=reactor, fresh=2 * config.announce_interval + 1)
    site = make_site(observed(with_stats(swarms, store), observation), reactor=reactor, access_log=config.access_log)
    if not config.access_log:  # the access log needs twisted.web's requests (kraken.tracker.lean)
        lean_announces(site, app, observation.requests)
    listen_http(
        config.listen_http,
        site,
        reactor=reactor,
        component="tracker",
        tls=server_side(tls),
        origin=config.origin,
    ).setServiceParent(top)
    return top


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return tracker_service(options["parsed"], reactor)
