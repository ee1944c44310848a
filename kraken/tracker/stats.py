"""``GET /stats`` of the tracker: its peer store's state as a small JSON document.

::

    {"peer_store": {"kind": "redis", "reachable": true, "outages": 1, "bad_entries": 0, "blobs": 3, "peers": 18}}

``kind`` is ``memory`` or ``redis``; ``reachable`` is whether Redis answered the last call (always true for
the memory store); ``outages`` counts the times Redis became unreachable and ``bad_entries`` the entries read
back from Redis that could not be parsed and were skipped (both 0 for the memory store); ``blobs`` and
``peers`` are what this tracker holds in memory (with Redis: its local copy), stale entries not yet swept
included.

The route is a resource of its own in front of the tracker's (``with_stats``), so that the announce path in
``kraken.tracker.http`` is left as it is: a request for exactly ``/stats`` is answered here, every other one
goes on to the tracker's resource unchanged.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from kraken.net.histogram import HistogramCollector
from kraken.net.metrics import StatsCollector, table
from kraken.net.server import json_response
from kraken.tracker.http import TrackerHTTP
from kraken.tracker.peers import MemoryPeerStore
from kraken.tracker.redis_peers import RedisPeerStore


def peer_store_stats(store: MemoryPeerStore | RedisPeerStore) -> dict[str, Any]:
    """The ``peer_store`` object of ``/stats``."""
    if isinstance(store, RedisPeerStore):
        local: MemoryPeerStore = store.local
        doc: dict[str, Any] = {
            "kind": "redis", "reachable": store.reachable, "outages": store.outages, "bad_entries": store.bad_entries,
        }  # fmt: skip
    else:
        local = store
        doc = {"kind": "memory", "reachable": True, "outages": 0, "bad_entries": 0}
    return doc | {"blobs": local.blob_count(), "peers": len(local)}


class StatsResource(Resource):
    """``GET /stats`` (any other method: 405, as JSON)."""

    isLeaf = True

    def __init__(self, store: MemoryPeerStore | RedisPeerStore) -> None:
        super().__init__()
        self._store = store

    def render(self, request: IRequest) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return json_response(request, 405, {"error": "method not allowed: use GET"})
        return json_response(request, 200, {"peer_store": peer_store_stats(self._store)})


class WithStats(Resource):
    """Exactly ``/stats`` to ``stats``; everything else to ``rest`` (the tracker's resource), untouched."""

    isLeaf = True

    def __init__(self, stats: IResource, rest: IResource) -> None:
        super().__init__()
        self._mine: dict[tuple[bytes, ...], IResource] = {(b"stats",): stats}
        self._rest = rest

    def render(self, request: IRequest) -> Any:
        return self._mine.get(tuple(request.postpath), self._rest).render(request)


def with_stats(rest: IResource, store: MemoryPeerStore | RedisPeerStore) -> IResource:
    """The tracker's resource ``rest`` with ``GET /stats`` of ``store`` in front of it."""
    return WithStats(StatsResource(store), rest)


#: The tracker's series: its peer store's state (as ``/stats``) and the handouts of its announces. Announces
#: themselves are ``kraken_http_requests_total{route="/announce"}``.
PEER_STORE = table("""
gauge   kraken_tracker_peer_store_reachable    reachable    1 if the peer store answered its last call (Redis), else 0.
counter kraken_tracker_peer_store_outages      outages      Times Redis became unreachable.
counter kraken_tracker_peer_store_bad_entries  bad_entries  Entries read back from Redis that could not be parsed.
gauge   kraken_tracker_blobs                   blobs        Blobs with peers this tracker holds in memory.
gauge   kraken_tracker_peers                   peers        Peers this tracker holds in memory (all blobs).
""")
HANDOUTS = table("""
counter kraken_tracker_handouts       handouts          Announces answered with a list of peers.
counter kraken_tracker_handout_peers  handed_out_peers  Peers handed out (sum of the handout sizes).
""")


def register_tracker(registry: CollectorRegistry, store: MemoryPeerStore | RedisPeerStore, app: TrackerHTTP) -> None:
    """The tracker's series on ``registry``: ``store``'s state and ``app``'s (``TrackerHTTP``) handout counters
    and sizes."""
    registry.register(StatsCollector(lambda: peer_store_stats(store), PEER_STORE))
    registry.register(StatsCollector(lambda: app, HANDOUTS))
    sizes = HistogramCollector(
        "kraken_tracker_handout_size", "Peers handed out per announce answered with a list.",
        lambda: {(): app.handout_sizes},
    )  # fmt: skip
    registry.register(sizes)
