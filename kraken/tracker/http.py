"""The tracker's HTTP API (Klein).

Routes (``<ns>`` is a repository name and may contain slashes)::

    GET  /health                                  "OK\\n"
    POST /announce                                JSON announce -> {"peers": [...], "interval": seconds}
    GET  /namespace/<ns>/blobs/<digest>/metainfo  -> MetaInfo JSON (from the origin, cached) / 404

An announce body has exactly these keys, plus optionally ``"unreachable"`` and ``"progress"``::

    {"peer_id": "<40 or 64 hex>", "ip": "10.0.0.7", "port": 16001, "namespace": "library/alpine",
     "digest": "sha256:<hex>", "info_hash": "<64 hex>", "complete": false,
     "unreachable": ["<40 or 64 hex>", ...]}

``unreachable`` (at most ``MAX_UNREACHABLE`` peer ids) names the peers of
this blob the agent failed to reach since its last announce; they may be
hidden from answers for a while (``kraken.tracker.unreachable``). ``progress``
(``kraken.tracker.progress``) is what the peer has and has moved, kept with
its entry for the live swarm page (``kraken.tracker.swarmview``).

The announcing peer is recorded (or refreshed) under the address the
request came from (its client address, not the ``ip`` in the body); an
agent still downloading gets up to ``max_peers`` peers (the origins holding
the blob first, then agents chosen fairly across announcing addresses,
``kraken.tracker.fair``), while a completed agent gets an empty list, as in
Kraken: seeders do not open connections. ``interval`` is in seconds. Which
origins hold the blob is asked of the origin and cached
(``kraken.tracker.origins.OriginPeers``); if that fails, the answer has
agents only.

Every error is JSON ``{"error": "..."}`` (``kraken.net.server.json_error``).

``POST /announce`` is the hot path (thousands a second), so it is served by
a plain twisted.web resource, ``AnnounceResource``, ahead of the Klein app:
Klein's routing and its Deferred plumbing cost a quarter of each announce.
``TrackerResource`` sends a request for exactly ``/announce`` there and
everything else to Klein, which also routes the odd spellings of the path
(``//announce``, ``/%61nnounce``) to the same resource.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import MethodNotAllowed

from kraken.core import Digest, DigestError
from kraken.core.peer import PeerError, PeerInfo, is_peer_id
from kraken.net.histogram import Histogram
from kraken.net.server import HTTPError, json_error, read_body
from kraken.registry.names import is_valid_name
from kraken.tracker.fair import source_key
from kraken.tracker.handout import AnswerEncoder, handout
from kraken.tracker.metainfo import MetaInfoCache, MetaInfoSource
from kraken.tracker.origins import OriginPeers
from kraken.tracker.peers import IPeerStore, MemoryPeerStore
from kraken.tracker.progress import Progress, ProgressError, check_progress

#: An announce is a few hundred bytes; 50 unreachable peer ids of 64 hex characters add about 3.4 KB.
MAX_ANNOUNCE_BODY = 8192
ANNOUNCE_KEYS = frozenset({"peer_id", "ip", "port", "namespace", "digest", "info_hash", "complete"})
OPTIONAL_ANNOUNCE_KEYS = frozenset({"unreachable", "progress"})
_ALLOWED_KEYS = ANNOUNCE_KEYS | OPTIONAL_ANNOUNCE_KEYS
#: At most this many peers reported unreachable in one announce.
MAX_UNREACHABLE = 50
#: Bucket bounds of the handout sizes (peers per answer; ``kraken_tracker_handout_size``).
HANDOUT_SIZES = (0, 1, 2, 5, 10, 20, 50, 100, 200)
_INFO_HASH = re.compile(r"[0-9a-f]{64}\Z")


def _parse_digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except (DigestError, TypeError) as e:
        raise HTTPError(400, f"invalid digest: {e}") from None


def _check_namespace(ns: object) -> str:
    if not isinstance(ns, str) or not is_valid_name(ns):
        raise HTTPError(400, f"invalid namespace {ns!r}")
    return ns


class Announce(NamedTuple):
    """A parsed announce body."""

    peer: PeerInfo
    namespace: str
    digest: Digest
    info_hash: str
    #: Peer ids the agent failed to reach since its last announce (distinct, in the order given).
    unreachable: tuple[str, ...] = ()


def parse_announce(body: bytes) -> Announce:
    """An announce body, parsed; ``HTTPError(400)`` if anything is off (its ``progress`` too)."""
    return parse_announce_and_progress(body)[0]


#: Announce bodies parsed lately (of at most ``MEMO_BODY_BYTES``, without ``progress`` or ``unreachable``): an
#: agent sends the same body every few seconds while it downloads, and parsing it was a tenth of an announce's CPU.
#: At most ``BODY_MEMO_SIZE``; when full, the memo starts afresh.
_BODIES: dict[bytes, Announce] = {}
BODY_MEMO_SIZE = 20_000
MEMO_BODY_BYTES = 1024


def parse_announce_and_progress(body: bytes) -> tuple[Announce, dict[str, Any] | None]:
    """An announce body, parsed, and its checked ``progress`` (None without one); ``HTTPError(400)`` if
    anything is off."""
    known = _BODIES.get(body)
    if known is not None:
        return known, None
    announce, progress = _parse_announce(body)
    if progress is None and not announce.unreachable and len(body) <= MEMO_BODY_BYTES:
        if len(_BODIES) >= BODY_MEMO_SIZE:
            _BODIES.clear()
        _BODIES[body] = announce
    return announce, progress


def _parse_announce(body: bytes) -> tuple[Announce, dict[str, Any] | None]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HTTPError(400, "announce body must be JSON") from None
    if not isinstance(doc, dict):
        raise HTTPError(400, "announce body must be a JSON object")
    keys = doc.keys()
    missing, unknown = ANNOUNCE_KEYS - keys, keys - _ALLOWED_KEYS
    if missing:
        raise HTTPError(400, f"announce is missing {', '.join(sorted(missing))}")
    if unknown:
        raise HTTPError(400, f"announce has unknown keys {', '.join(sorted(unknown))}")
    namespace = _check_namespace(doc["namespace"])
    if not isinstance(doc["digest"], str):
        raise HTTPError(400, "digest must be text")
    digest = _parse_digest(doc["digest"])
    info_hash = doc["info_hash"]
    if not isinstance(info_hash, str) or not _INFO_HASH.match(info_hash):
        raise HTTPError(400, "info_hash must be 64 lowercase hex characters")
    try:
        peer = _peer(doc["peer_id"], doc["ip"], doc["port"], doc["complete"])
    except PeerError as e:
        raise HTTPError(400, str(e)) from None
    if "unreachable" not in doc and "progress" not in doc:
        return Announce(peer, namespace, digest, info_hash), None
    unreachable = _parse_unreachable(doc["unreachable"]) if "unreachable" in doc else ()
    progress = None
    if "progress" in doc:
        try:
            progress = check_progress(doc["progress"])
        except ProgressError as e:
            raise HTTPError(400, str(e)) from None
    return Announce(peer, namespace, digest, info_hash, unreachable), progress


#: The peers of recent announces, by their fields as announced: an agent announces the same fields every
#: few seconds, and checking them (the ip through ``ipaddress``) cost more than a tenth of parsing an announce.
_PEERS: dict[tuple[str, str, int, bool], PeerInfo] = {}
#: At most this many are remembered; when full, the memo starts afresh.
PEER_MEMO_SIZE = 100_000


def _peer(peer_id: object, ip: object, port: object, complete: object) -> PeerInfo:
    """The agent ``PeerInfo`` of these announced fields; ``PeerError`` if one is off."""
    # Exact types only: True == 1 and 1.0 == 1 as keys, but neither is a port.
    if type(peer_id) is not str or type(ip) is not str or type(port) is not int or type(complete) is not bool:
        return PeerInfo(peer_id, ip, port, complete=complete, origin=False)  # type: ignore[arg-type]  # it refuses
    key = (peer_id, ip, port, complete)
    peer = _PEERS.get(key)
    if peer is None:
        peer = PeerInfo(peer_id, ip, port, complete=complete, origin=False)
        if len(_PEERS) >= PEER_MEMO_SIZE:
            _PEERS.clear()
        _PEERS[key] = peer
    return peer


def _parse_unreachable(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_UNREACHABLE:
        raise HTTPError(400, f"unreachable must be a list of at most {MAX_UNREACHABLE} peer ids")
    for item in value:
        if not is_peer_id(item):
            raise HTTPError(
                400, f"unreachable must hold peer ids of 40 or 64 lowercase hex characters, not {item!r:.80}"
            )
    return tuple(dict.fromkeys(value))


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
        # The in-memory store answers at once: announces to it skip the coroutine (``answer``).
        self._memory = store if type(store) is MemoryPeerStore else None
        self._clock = clock
        self._max_peers = max_peers
        # The origins seeding each blob; None hands out agents only.
        self.origin_peers = origin_peers
        self._rng = rng or random.Random()
        self.metainfo_cache = MetaInfoCache(origin, clock=clock, ttl=metainfo_cache_ttl, size=metainfo_cache_size)
        self._encoder = AnswerEncoder(announce_interval)
        self._no_peers = self._encoder.encode([])
        self.announce_resource = AnnounceResource(self)
        #: Announces answered with peers (not those of complete peers), and the peers they were given (metrics).
        self.handouts = 0
        self.handed_out_peers = 0
        self.handout_sizes = Histogram(HANDOUT_SIZES)

    def resource(self) -> IResource:
        """The whole API: ``POST /announce`` on its fast path, the rest through Klein."""
        return TrackerResource(self.announce_resource, self.app.resource())

    def error(self, request: IRequest, failure: Failure) -> bytes:
        """An error's JSON answer (status and headers set on ``request``)."""
        return json_error(request, failure, self.log)

    @app.handle_errors(Exception)
    def _error(self, request: IRequest, failure: Failure) -> bytes:
        return self.error(request, failure)

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"OK\n"

    @app.route("/announce", methods=["POST"])
    def announce_route(self, request: IRequest) -> IResource:
        # Only paths Klein normalises get here (TrackerResource takes /announce itself).
        return self.announce_resource

    async def announce(
        self,
        peer: PeerInfo,
        digest: Digest,
        info_hash: str,
        source: str,
        unreachable: Sequence[str] = (),
        progress: dict[str, Any] | None = None,
    ) -> bytes:
        """Record ``peer``'s announce of ``digest`` from the address ``source``
        (its reports of ``unreachable`` peers, and its checked ``progress``); the answer's JSON."""
        now = self._clock.seconds()
        if progress is None:
            await self._store.update(info_hash, peer, now, source)
        else:
            await self._store.update(info_hash, peer, now, source, progress=Progress(str(digest), progress))
        if unreachable:
            await self._store.report_unreachable(info_hash, [p for p in unreachable if p != peer.peer_id], source, now)
        # No log event per announce: at thousands a second even a filtered debug event costs a tenth of the CPU.
        if peer.complete:
            return self._no_peers
        # One more than needed: the requester itself may be among them.
        known = await self._store.peers(info_hash, self._max_peers + 1, now)
        origins = [] if self.origin_peers is None else await self.origin_peers.get(digest)
        return self._handout(peer, known, origins)

    def answer(self, announce: Announce, progress: dict[str, Any] | None, source: str) -> bytes | Deferred[bytes]:
        """``announce`` (parsed) from the address ``source``: the answer's JSON, at once when nothing had to
        wait (the in-memory store, and this blob's origins known), else a Deferred of it. With the in-memory
        store this is what ``announce`` does, without a coroutine: an error of the store raises here."""
        peer, _namespace, digest, info_hash, unreachable = announce
        store = self._memory
        if store is None:
            return Deferred.fromCoroutine(self.announce(peer, digest, info_hash, source, unreachable, progress))
        now = self._clock.seconds()
        store.record(info_hash, peer, now, source, None if progress is None else Progress(str(digest), progress))
        if unreachable:
            store.report(info_hash, [p for p in unreachable if p != peer.peer_id], source, now)
        if peer.complete:
            return self._no_peers
        known = store.live(info_hash, self._max_peers + 1, now)
        if self.origin_peers is None:
            return self._handout(peer, known, [])
        origins: Deferred[list[PeerInfo]] = self.origin_peers.get(digest)
        got: list[list[PeerInfo]] = []
        origins.addCallback(got.append)
        if got:
            return self._handout(peer, known, got[0])
        return origins.addCallback(lambda _: self._handout(peer, known, got[0]))

    def _handout(self, peer: PeerInfo, known: list[PeerInfo], origins: list[PeerInfo]) -> bytes:
        """The answer's JSON for ``peer``: ``known`` (the store's choice) after ``origins``; counted."""
        peers = handout(known, origins, peer.peer_id, self._max_peers, self._rng)
        self.handouts += 1
        self.handed_out_peers += len(peers)
        self.handout_sizes.observe(len(peers))
        return self._encoder.encode(peers)

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


def begin_announce(tracker: TrackerHTTP, body: bytes, host: str | None) -> bytes | Deferred[bytes]:
    """The answer to the announce ``body`` from the client address ``host`` (``TrackerHTTP.answer``). A body
    that does not parse raises ``HTTPError`` (400) before anything is recorded."""
    announce, progress = parse_announce_and_progress(body)
    return tracker.answer(announce, progress, source_key(host))


class AnnounceResource(Resource):
    """``POST /announce`` as a plain twisted.web resource.

    What the Klein route did, without its routing and Deferred plumbing:
    the same body cap, the same error JSON and status codes (405 for any
    other method), and the same care for a client that goes away while the
    store is awaited: the answer's Deferred is cancelled, and nothing is
    written to the finished request. When everything the answer awaited had
    already fired (the in-memory store, a cached origin lookup), the answer
    is returned at once, as ``bytes``, with no Deferred left waiting.
    Answers carry a Content-Length (Klein's were chunked).
    """

    isLeaf = True

    def __init__(self, tracker: TrackerHTTP) -> None:
        super().__init__()
        self._tracker = tracker

    def render(self, request: IRequest) -> bytes | int:
        if request.method != b"POST":
            return self._tracker.error(request, Failure(MethodNotAllowed(["POST"])))
        return self.render_POST(request)

    def render_POST(self, request: IRequest) -> bytes | int:
        tracker = self._tracker
        try:
            body = read_body(request, MAX_ANNOUNCE_BODY)
            answer = begin_announce(tracker, body, getattr(request.getClientAddress(), "host", None))
        except Exception:
            return tracker.error(request, Failure())
        if isinstance(answer, bytes):
            return self._body(request, answer)
        result: list[bytes | Failure] = []
        answer.addBoth(result.append)
        if result:  # answered already: the usual case with the in-memory store
            return self._body(request, result[0])
        gone: list[Failure] = []

        def went_away(reason: Failure) -> None:
            gone.append(reason)
            answer.cancel()

        request.notifyFinish().addErrback(went_away)  # type: ignore[attr-defined]  # Request has it, IRequest not
        answer.addCallback(lambda _: self._late(request, result[0], gone=bool(gone)))
        answer.addErrback(lambda f: tracker.log.failure("writing an announce answer failed", f))
        return NOT_DONE_YET

    def _late(self, request: IRequest, result: bytes | Failure, *, gone: bool) -> None:
        """Answer once the answer is in, unless the client has gone."""
        if gone:
            if isinstance(result, Failure) and not result.check(CancelledError):
                self._tracker.log.failure("announce failed after its client went away", result)
            return
        body = self._body(request, result)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def _body(self, request: IRequest, result: bytes | Failure) -> bytes:
        if isinstance(result, Failure):
            return self._tracker.error(request, result)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        return result


class TrackerResource(Resource):
    """The tracker's root: exactly ``/announce`` to ``announce``, everything else to ``rest`` (the Klein app)."""

    isLeaf = True

    def __init__(self, announce: IResource, rest: IResource) -> None:
        super().__init__()
        self._announce = announce
        self._rest = rest

    def render(self, request: IRequest) -> Any:
        if request.postpath == [b"announce"]:
            return self._announce.render(request)
        return self._rest.render(request)
