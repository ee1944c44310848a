"""The live swarm page: what the tracker knows of each swarm, as JSON and as a page that polls it.

Routes (served in front of the tracker's API by ``with_swarms``, on the same listener, so behind the
tracker's TLS and mutual TLS too)::

    GET /swarms                  the index of active swarms (HTML; the page polls /swarms.json)
    GET /swarms.json             {"swarms": [...], "count": n, "shown": m}
    GET /swarms/<key>            one swarm (HTML; the page polls /swarms/<key>.json every second)
    GET /swarms/<key>.json       one swarm's document, or 404 {"error": ...}
    GET /swarms.js, /swarms.css  the script and the style sheet of both pages

``<key>`` is the blob's digest (``sha256:<hex>``), known once one of its peers reported progress, or its
info hash (64 hex characters), which every announce names. Everything comes from this tracker's memory (with
Redis, its local copy; progress is never written to Redis): the peers that announced the blob and have not
expired, each with the latest ``progress`` it sent (``kraken.tracker.progress``). Origins do not announce:
they appear as the sources agents name, their egress the sum of what agents report having received from
them. Rates are those of each peer's latest report; the sums count only reports younger than ``fresh``
seconds (a complete agent stops announcing, and its last rates would otherwise be counted for ever).

Everything is built at read time, on the reactor thread: an announce pays nothing for this page. The pages
are static files shipped with the package (``kraken/tracker/static``), plain HTML and JavaScript with no
build step; the script puts every value into the page as text (``textContent``), never as markup, and the
answers carry a Content-Security-Policy that allows only this tracker's own script and style sheet.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from kraken.net.server import json_response
from kraken.tracker.peers import MemoryPeerStore
from kraken.tracker.redis_peers import RedisPeerStore
from kraken.tracker.swarm import Entry, Swarm

#: The most swarms the index lists (the most recently announced), and peers one swarm's document lists (the
#: most recently seen); the counts say how many there are.
MAX_SWARMS = 200
MAX_PEERS = 200
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z|sha512:[0-9a-f]{128}\Z")
_INFO_HASH = re.compile(r"[0-9a-f]{64}\Z")
_FILES = {"swarms.html": b"text/html; charset=utf-8", "swarm.html": b"text/html; charset=utf-8",
          "swarms.js": b"text/javascript; charset=utf-8", "swarms.css": b"text/css; charset=utf-8"}  # fmt: skip
CSP = b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'"
_TOP = (b"swarms", b"swarms.json", b"swarms.js", b"swarms.css")


def _static(name: str) -> bytes:
    return resources.files("kraken.tracker").joinpath("static").joinpath(name).read_bytes()


def peer_row(entry: Entry, now: float) -> dict[str, Any]:
    """One peer of a swarm's document."""
    peer, doc = entry.peer, entry.progress
    row: dict[str, Any] = {
        "peer_id": peer.peer_id, "address": peer.address, "kind": "origin" if peer.origin else "agent",
        "complete": peer.complete, "age": round(now - entry.seen, 1), "progress": None,
    }  # fmt: skip
    if doc is not None:
        pieces = doc["pieces"]
        row["progress"] = 100.0 if pieces == 0 else round(100.0 * doc["have"] / pieces, 1)
        row.update({k: doc[k] for k in ("have", "pieces", "bytes_in", "bytes_out", "rate_in", "rate_out", "sources")})
    elif peer.complete:
        row["progress"] = 100.0
    return row


def _live(store: MemoryPeerStore, swarm: Swarm, now: float) -> list[Entry]:
    """The swarm's entries not expired, the most recently seen first."""
    ttl = store.ttl
    return [e for e in reversed(swarm.entries.values()) if now - e.seen <= ttl]


def swarm_doc(store: MemoryPeerStore, info_hash: str, swarm: Swarm, now: float, fresh: float) -> dict[str, Any]:
    """One swarm's document: its peers, its origins' egress and the totals."""
    entries = _live(store, swarm, now)
    rows = [peer_row(e, now) for e in entries[:MAX_PEERS]]
    origins: dict[str, dict[str, Any]] = {}
    rate_in = rate_out = 0.0
    for entry in entries:
        doc = entry.progress
        if doc is None:
            continue
        is_fresh = now - entry.seen <= fresh
        if is_fresh:
            rate_in += doc["rate_in"]
            rate_out += doc["rate_out"]
        for source in doc["sources"]:
            if source["origin"]:
                blank = {"peer_id": source["peer_id"], "bytes_out": 0, "rate_out": 0.0}
                o = origins.setdefault(source["peer_id"], blank)
                o["bytes_out"] += source["bytes"]
                o["rate_out"] += source["rate"] if is_fresh else 0.0
    complete = sum(1 for e in entries if e.peer.complete)
    return {
        "digest": swarm.digest, "info_hash": info_hash, "peer_count": len(entries), "complete": complete,
        "rate_in": round(rate_in, 1), "rate_out": round(rate_out, 1), "peers": rows,
        "origins": sorted(origins.values(), key=lambda o: o["peer_id"]),
    }  # fmt: skip


def index_doc(store: MemoryPeerStore, now: float) -> dict[str, Any]:
    """The active swarms (those with a live peer), the most recently announced first."""
    swarms: list[dict[str, Any]] = []
    for info_hash, swarm in store.recent():
        if len(swarms) >= MAX_SWARMS:
            break
        entries = _live(store, swarm, now)
        if not entries:
            continue
        reported = [e.progress for e in entries if e.progress is not None]
        have = sum(d["have"] for d in reported)
        pieces = sum(d["pieces"] for d in reported)
        swarms.append({
            "digest": swarm.digest, "info_hash": info_hash, "peers": len(entries),
            "complete": sum(1 for e in entries if e.peer.complete),
            "progress": None if not pieces else round(100.0 * have / pieces, 1),
        })  # fmt: skip
    return {"swarms": swarms, "shown": len(swarms), "count": store.blob_count()}


def find(store: MemoryPeerStore, key: str) -> tuple[str, Swarm] | None:
    """The swarm named by ``key`` (a digest, or an info hash): a look-up by info hash, or a walk by digest."""
    if _INFO_HASH.match(key):
        swarm = store.swarm(key)
        return None if swarm is None else (key, swarm)
    for info_hash, swarm in store.recent():
        if swarm.digest == key:
            return info_hash, swarm
    return None


def swarm_route(path: bytes) -> str | None:
    """The metrics route label of a path served here (bounded: never the key itself)."""
    if path in (b"/swarms", b"/swarms/", b"/swarms.json", b"/swarms.js", b"/swarms.css"):
        return path.decode("ascii").rstrip("/")
    if path.startswith(b"/swarms/"):
        return "/swarms/<key>.json" if path.endswith(b".json") else "/swarms/<key>"
    return None


class SwarmResource(Resource):
    """``/swarms``, ``/swarms.json``, ``/swarms.js``, ``/swarms.css``, ``/swarms/<key>`` and ``/swarms/<key>.json``."""

    isLeaf = True

    def __init__(self, store: MemoryPeerStore | RedisPeerStore, clock: IReactorTime, fresh: float) -> None:
        super().__init__()
        self._store = store.local if isinstance(store, RedisPeerStore) else store
        self._clock = clock
        self._fresh = fresh
        self._files = {name: _static(name) for name in _FILES}

    def render(self, request: IRequest) -> bytes:
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Cache-Control", b"no-store")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return json_response(request, 405, {"error": "method not allowed: use GET"})
        path = [p.decode("latin-1") for p in request.postpath]
        now = self._clock.seconds()
        if path in (["swarms"], ["swarms", ""]):
            return self._file(request, "swarms.html")
        if path in (["swarms.js"], ["swarms.css"]):
            return self._file(request, path[0])
        if path == ["swarms.json"]:
            return json_response(request, 200, index_doc(self._store, now))
        if len(path) != 2:
            return json_response(request, 404, {"error": "no such page: see /swarms"})
        key, as_json = (path[1][:-5], True) if path[1].endswith(".json") else (path[1], False)
        if not (_DIGEST.match(key) or _INFO_HASH.match(key)):
            return json_response(request, 400, {"error": "a swarm is named by its digest or its info hash (hex)"})
        if not as_json:
            return self._file(request, "swarm.html")
        found = find(self._store, key)
        if found is None:
            return json_response(request, 404, {"error": f"no swarm of {key} on this tracker"})
        return json_response(request, 200, swarm_doc(self._store, *found, now, self._fresh))

    def _file(self, request: IRequest, name: str) -> bytes:
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", _FILES[name])
        request.setHeader(b"Content-Security-Policy", CSP)
        return self._files[name]


class WithSwarms(Resource):
    """Paths under ``/swarms`` to the swarm page; everything else to ``rest``, untouched."""

    isLeaf = True

    def __init__(self, swarms: IResource, rest: IResource) -> None:
        super().__init__()
        self._swarms = swarms
        self._rest = rest

    def render(self, request: IRequest) -> Any:
        first = request.postpath[0] if request.postpath else b""
        if first in _TOP:
            return self._swarms.render(request)
        return self._rest.render(request)


def with_swarms(
    rest: IResource, store: MemoryPeerStore | RedisPeerStore, *, clock: IReactorTime, fresh: float
) -> IResource:
    """The tracker's resource ``rest`` with the live swarm page in front of it."""
    return WithSwarms(SwarmResource(store, clock, fresh), rest)
