"""The tracker's configuration (``etc/kraken/tracker.yaml``).

Defaults and why:

- ``announce_interval`` 3 s is Kraken's: agents re-announce a blob they are
  downloading this often, so new peers find each other within seconds.
- ``peer_ttl`` 1 h. A completed agent announces once (``complete: true``)
  and then stops announcing, so its entry must outlive the announce loop by
  as long as the agent keeps seeding; Kraken's in-memory store keeps entries
  5 h. A stale entry costs a failed dial (and the agent blacklists it), a
  missing one sends more load to the origins; 1 h favours freshness.
- ``max_peers`` 50 is Kraken's ``announce_limit``.
- ``max_peers_per_source`` 200: peers of one blob kept per announcing
  address (the request's client address; an IPv6 /64 counts as one). One
  address flooding a blob with made-up peers then evicts its own oldest,
  never the others' (it takes five to fill ``max_peers_per_blob`` 1,000).
  It is well above the agents one host runs in one swarm: the herd and the
  loopback benchmarks put up to 50 (``bench/swarm.py``) or 100
  (``bench/tracker_load.py``) agents on 127.0.0.1. Raise it when many agents
  reach the tracker through one NAT or proxy address.
- ``unreachable_hold`` 60 s and ``unreachable_quorum`` 2: a peer that agents
  report unreachable is hidden from answers for 60 s after the latest
  report once two addresses report it, and for 60 s at most every 120 s
  while only one does (``kraken.tracker.unreachable``). A minute is twenty
  announce intervals: an agent that found the peer dead has moved on; a
  peer hidden by mistake (or by a liar) is back within a minute.
- ``metainfo_cache_ttl`` 5 min is what Kraken's nginx caches metainfo for;
  metainfo never changes for a blob, the TTL only bounds memory and lets a
  changed piece-length rule take effect. ``metainfo_cache_size`` 1,000:
  a metainfo holds 32 bytes per piece (about 140 KiB of JSON for a 2 GiB
  blob of 1 MiB pieces), so the cache stays under about 140 MB.
- ``origin_peers_cache_ttl`` 10 s: which origins seed a blob is asked of
  the origin (``GET /blobs/<digest>/peers``). Agents announce every 3 s, so
  this spares the origin all but one lookup in a few announces, and an
  origin that has just received a blob is handed out within seconds. A
  failed lookup is remembered for 1 s (and answered as "no origins").
"""

from __future__ import annotations

import attrs

from kraken.config import Duration, positive
from kraken.net import HTTPClientConfig
from kraken.net.endpoints import check_listen
from kraken.net.tls import TLSConfig
from kraken.origin.client import check_origins
from kraken.tracker.store_config import PeerStoreConfig

DEFAULT_LISTEN_HTTP = "tcp:15003:interface=127.0.0.1"


@attrs.frozen
class TrackerConfig:
    # Endpoint description of the HTTP API (tcp:, ssl:, unix:, systemd: ...).
    listen_http: str = attrs.field(default=DEFAULT_LISTEN_HTTP, validator=check_listen)
    # Base URL of an origin, or a list of them: the origin cluster that serves metainfo
    # (any member knows where each blob lives; the others are asked when one does not answer).
    origin: str | tuple[str, ...] = attrs.field(default="http://127.0.0.1:15002", validator=check_origins)
    # Seconds between an agent's announces of a blob, returned in every answer.
    announce_interval: Duration = attrs.field(default=Duration(3.0), validator=positive)
    # A peer not announced for this long is forgotten.
    peer_ttl: Duration = attrs.field(default=Duration(3600.0), validator=positive)
    # Peers in one announce answer.
    max_peers: int = attrs.field(default=50, validator=positive)
    # Peers remembered per blob, and blobs remembered (bounds the store's memory).
    max_peers_per_blob: int = attrs.field(default=1000, validator=positive)
    # Peers of one blob kept per announcing address (its least recently seen go first).
    max_peers_per_source: int = attrs.field(default=200, validator=positive)
    # How long a peer reported unreachable is hidden, and how many addresses must report it
    # for reports to keep it hidden (one address hides it at most half the time).
    unreachable_hold: Duration = attrs.field(default=Duration(60.0), validator=positive)
    unreachable_quorum: int = attrs.field(default=2, validator=positive)
    max_blobs: int = attrs.field(default=100_000, validator=positive)
    # How long metainfo fetched from the origin is served from memory, and how many are kept.
    metainfo_cache_ttl: Duration = attrs.field(default=Duration(300.0), validator=positive)
    metainfo_cache_size: int = attrs.field(default=1_000, validator=positive)
    # How long the origins seeding a blob (asked of the origin) are remembered, and for how many blobs.
    origin_peers_cache_ttl: Duration = attrs.field(default=Duration(10.0), validator=positive)
    origin_peers_cache_size: int = attrs.field(default=10_000, validator=positive)
    # One log line per HTTP request. Off by default: at thousands of announces a second the
    # lines cost about a fifth of the tracker's CPU (bench/tracker_load.py).
    access_log: bool = False
    http_client: HTTPClientConfig = attrs.field(factory=HTTPClientConfig)
    # TLS for this daemon's listeners and clients (kraken.net.tls; absent: plain).
    tls: TLSConfig = attrs.field(factory=TLSConfig)
    # Where peers live: this tracker's memory (the default) or Redis shared by several trackers
    # (kraken.tracker.store_config, kraken.tracker.redis_peers).
    peer_store: PeerStoreConfig = attrs.field(factory=PeerStoreConfig)
