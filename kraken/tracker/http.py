"""The tracker's HTTP API (Klein).

Routes (``<ns>`` is a repository name and may contain slashes)::

    GET  /health                                  "OK\\n"
    POST /announce                                JSON announce -> {"peers": [...], "interval": seconds}
    GET  /namespace/<ns>/blobs/<digest>/metainfo  -> MetaInfo JSON (from the origin, cached) / 404

An announce body is exactly::

    {"peer_id": "<40 or 64 hex>", "ip": "10.0.0.7", "port": 16001, "namespace": "library/alpine",
     "digest": "sha256:<hex>", "info_hash": "<64 hex>", "complete": false}

The announcing peer is recorded (or refreshed); an agent still downloading
gets up to ``max_peers`` peers (completed agents, then the origins holding
the blob, then other downloaders), while a completed agent gets an empty
list, as in Kraken: seeders do not open connections. ``interval`` is in
seconds. Which origins hold the blob is asked of the origin and cached
(``kraken.tracker.origins.OriginPeers``); if that fails, the answer has
agents only.

Every error is JSON ``{"error": "..."}``, produced by one ``handle_errors``.
"""

from __future__ import annotations

import json
import random
import re
from collections import OrderedDict
from typing import Any, Protocol

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from kraken.core import Digest, DigestError, MetaInfo
from kraken.core.peer import PeerError, PeerInfo
from kraken.net.server import HTTPError, json_error, json_response, read_body
from kraken.registry.names import is_valid_name
from kraken.tracker.handout import handout
from kraken.tracker.origins import OriginPeers
from kraken.tracker.peers import IPeerStore

#: An announce is a few hundred bytes.
MAX_ANNOUNCE_BODY = 4096
ANNOUNCE_KEYS = frozenset({"peer_id", "ip", "port", "namespace", "digest", "info_hash", "complete"})
_INFO_HASH = re.compile(r"[0-9a-f]{64}\Z")


class MetaInfoSource(Protocol):
    """What the tracker needs of ``kraken.origin.client.OriginClient``."""

    async def metainfo(self, namespace: str, digest: Digest) -> MetaInfo | None: ...


def _parse_digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except (DigestError, TypeError) as e:
        raise HTTPError(400, f"invalid digest: {e}") from None


def _check_namespace(ns: object) -> str:
    if not isinstance(ns, str) or not is_valid_name(ns):
        raise HTTPError(400, f"invalid namespace {ns!r}")
    return ns


def parse_announce(body: bytes) -> tuple[PeerInfo, str, Digest, str]:
    """(peer, namespace, digest, info hash) from an announce body; ``HTTPError(400)`` if anything is off."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HTTPError(400, "announce body must be JSON") from None
    if not isinstance(doc, dict):
        raise HTTPError(400, "announce body must be a JSON object")
    missing, unknown = sorted(ANNOUNCE_KEYS - set(doc)), sorted(set(doc) - ANNOUNCE_KEYS)
    if missing:
        raise HTTPError(400, f"announce is missing {', '.join(missing)}")
    if unknown:
        raise HTTPError(400, f"announce has unknown keys {', '.join(unknown)}")
    namespace = _check_namespace(doc["namespace"])
    if not isinstance(doc["digest"], str):
        raise HTTPError(400, "digest must be text")
    digest = _parse_digest(doc["digest"])
    info_hash = doc["info_hash"]
    if not isinstance(info_hash, str) or not _INFO_HASH.match(info_hash):
        raise HTTPError(400, "info_hash must be 64 lowercase hex characters")
    try:
        peer = PeerInfo(doc["peer_id"], doc["ip"], doc["port"], complete=doc["complete"], origin=False)
    except PeerError as e:
        raise HTTPError(400, str(e)) from None
    return peer, namespace, digest, info_hash


class MetaInfoCache:
    """Metainfo by (namespace, digest): fresh for ``ttl`` seconds, at most
    ``size`` entries (least recently used evicted). Concurrent misses for one
    blob share one origin fetch; each caller gets its own Deferred, so one
    client going away cancels nobody else. Absent blobs are not cached."""

    log = Logger()

    def __init__(self, source: MetaInfoSource, *, clock: IReactorTime, ttl: float, size: int) -> None:
        self._source = source
        self._clock = clock
        self._ttl = ttl
        self._size = size
        self._entries: OrderedDict[tuple[str, Digest], tuple[MetaInfo, float]] = OrderedDict()
        self._waiting: dict[tuple[str, Digest], list[Deferred[MetaInfo | None]]] = {}
        self.fetches = 0

    def get(self, namespace: str, digest: Digest) -> Deferred[MetaInfo | None]:
        key = (namespace, digest)
        hit = self._entries.get(key)
        if hit is not None:
            info, expires = hit
            if self._clock.seconds() < expires:
                self._entries.move_to_end(key)
                return succeed(info)
            del self._entries[key]
        waiters = self._waiting.get(key)
        mine: Deferred[MetaInfo | None] = Deferred(lambda d: self._forget(key, d))
        if waiters is not None:
            waiters.append(mine)
            return mine
        self._waiting[key] = [mine]
        self.fetches += 1
        Deferred.fromCoroutine(self._source.metainfo(namespace, digest)).addBoth(lambda r: self._done(key, r))
        return mine

    def _forget(self, key: tuple[str, Digest], d: Deferred[MetaInfo | None]) -> None:
        waiters = self._waiting.get(key)
        if waiters is not None and d in waiters:
            waiters.remove(d)

    def _done(self, key: tuple[str, Digest], result: MetaInfo | Failure | None) -> None:
        waiters = self._waiting.pop(key, [])
        if isinstance(result, MetaInfo):
            self._entries[key] = (result, self._clock.seconds() + self._ttl)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
        if isinstance(result, Failure) and not waiters:
            # Everyone went away; nobody else will see this failure.
            self.log.debug("metainfo fetch failed with no one waiting: {error}", error=result.getErrorMessage())

    def __len__(self) -> int:
        return len(self._entries)


class TrackerHTTP:
    app = Klein()
    log = Logger()

    def __init__(
        self,
        store: IPeerStore,
        origin: MetaInfoSource,
        *,
        clock: IReactorTime,
        announce_interval: float,
        max_peers: int,
        origin_peers: OriginPeers | None = None,
        metainfo_cache_ttl: float = 300.0,
        metainfo_cache_size: int = 10_000,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._interval = announce_interval
        self._max_peers = max_peers
        # The origins seeding each blob; None hands out agents only.
        self.origin_peers = origin_peers
        self._rng = rng or random.Random()
        self.metainfo_cache = MetaInfoCache(origin, clock=clock, ttl=metainfo_cache_ttl, size=metainfo_cache_size)

    def resource(self) -> Any:
        return self.app.resource()

    @app.handle_errors(Exception)
    def _error(self, request: IRequest, failure: Failure) -> bytes:
        return json_error(request, failure, self.log)

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"OK\n"

    @app.route("/announce", methods=["POST"])
    async def announce(self, request: IRequest) -> bytes:
        peer, _namespace, digest, info_hash = parse_announce(read_body(request, MAX_ANNOUNCE_BODY))
        now = self._clock.seconds()
        await self._store.update(info_hash, peer, now)
        # No log event per announce: at thousands a second even a filtered debug event costs a tenth of the CPU.
        given: list[PeerInfo] = []
        if not peer.complete:
            # One more than needed: the requester itself may be among them.
            known = await self._store.peers(info_hash, self._max_peers + 1, now)
            origins = [] if self.origin_peers is None else await self.origin_peers.get(digest)
            given = handout(known, origins, peer.peer_id, self._max_peers, self._rng)
        return json_response(request, 200, {"peers": [p.to_json() for p in given], "interval": self._interval})

    @app.route("/namespace/<path:ns>/blobs/<d>/metainfo", methods=["GET"])
    async def metainfo(self, request: IRequest, ns: str, d: str) -> bytes:
        namespace = _check_namespace(ns)
        digest = _parse_digest(d)
        try:
            info = await self.metainfo_cache.get(namespace, digest)
        except CancelledError:
            raise
        except Exception as e:
            self.log.warn(
                "metainfo of {digest} from the origin failed: {error}", digest=str(digest), namespace=namespace,
                error=str(e),
            )  # fmt: skip
            raise HTTPError(502, f"origin failed: {e}") from None
        if info is None:
            raise HTTPError(404, f"metainfo of {digest} not found")
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        return info.to_json()
