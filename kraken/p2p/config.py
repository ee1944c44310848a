"""The P2P section shared by the agent's and the origin's configuration (``p2p:`` in their YAML).

Defaults and why (Kraken's values unless said otherwise):

- ``max_conns_per_torrent`` 10: each peer keeps at most ten connections per blob, so the swarm is a
  pseudo-random regular graph of degree about ten, whatever its size.
- ``pipeline_limit`` 1 request outstanding per agent peer (Kraken's is 3), ``origin_pipeline_limit`` 5 per origin.
  A seeder sends one piece per connection at a time anyway, so a deeper pipeline only queues requests at busy
  seeders, where the pieces they name wait while idle peers that hold them are not asked. With 1, the namespace
  testbed's slowest host was 4-6 % faster at 256 MiB and at 64 MiB with 10 hosts, and no slower at 64 MiB with
  50; the simulator agrees, by more (bench/RESULTS.md, 2026-12-08).
- ``request_timeout``: ``max(request_timeout_min, request_timeout_per_mib * piece MiB)`` = 16 s for 4 MiB pieces.
- ``conn_tti`` 30 s: a connection on which the peer sends nothing for this long is closed.
- ``seeder_tti`` 5 min: a finished blob nobody asked for is dropped from memory (it stays on disk and is served
  again on the next handshake). ``leecher_tti`` 5 min: a download that wrote no piece for this long fails.
- ``blacklist`` 30 s: after a peer breaks the protocol or sends a corrupt piece, or a dial to it is refused, it is
  not dialled again for this blob for this long (one that answered ``BUSY``: for 5 s). A peer that cannot be
  reached is blacklisted for longer each time in a row, up to ``blacklist_max`` 5 min; a dial or handshake that
  times out is forgiven once (5 s), as a saturated link loses a SYN now and then (see ``kraken.p2p.dials``).
- ``dial_hold`` 2 s: a pending dial holds a connection slot this long at most, so dials to dead peers cannot keep a
  torrent from its live ones; ``max_pending_dials`` 20 bounds the dials under way per torrent. 2 s covers one
  lost SYN (retransmitted after 1 s); on loopback a handshake takes milliseconds.
- ``slot_grace`` 5 s, ``slot_idle`` 30 s: a connection that has moved no piece either way for ``slot_idle`` is
  evicted from a complete torrent (and from a full one still downloading), and one that has moved none for
  ``slot_idle`` (or ever) makes way for a newcomer at a full torrent once it is ``slot_grace`` old; requests,
  ``HAVE`` and ``CANCEL`` do not count (see ``kraken.p2p.slots``). 30 s is about twice the request timeout of
  4 MiB pieces, after which an honest peer has asked elsewhere anyway.
- ``max_conns_per_address`` 3 per blob and ``max_conns_per_address_total`` 256 over all blobs, from one remote
  IP; ``address_limit_exempt`` (127.0.0.1 and ::1 by default) is not counted: on one host every agent shares
  the loopback address. A cluster runs one agent per host: one connection per blob to a given peer, and a
  second one while a dial race or a reconnection settles.
- ``super_seed`` (origins only, by default): a seeder declines to send a piece twice within a request timeout
  (counted from when the piece left its write buffer) while the first receiver is still connected, and an origin
  declines it whatever the time until it has sent every piece once, so an origin facing many agents spends its
  upload on pieces the swarm lacks.
- ``busy_backoff`` 5 s: a peer that answered ``BUSY``, whose dial or handshake timed out the first time, or that
  was evicted for moving no piece, is not dialled (nor admitted) again for this blob for this long.
- ``announce_interval`` 5 s: how often a download announces when the tracker's answer gives no usable interval
  (the announce failed, or the interval is not in (0, ``max_announce_interval`` 60 s]). A download with fewer
  connections than it may have, handed out more peers than it reached, announces again within
  ``underconnected_announce`` 1 s (or the tracker's interval, if shorter) to find peers with room.
- ``announce_progress`` off: when on, each announce carries the torrent's ``progress`` (``kraken.p2p.traffic``)
  for the tracker's live swarm page; off by default because a tracker older than that page refuses it.
- ``piece_memory`` 8 MiB: bytes of received pieces held while they are checked and written. Below it, a request
  slot goes to the next piece as soon as a payload has arrived; above it, only once the piece is written.
- bandwidth, in bits per second each way, is on by default for agents (Kraken's 200 MiB/s out, 300 MiB/s in)
  and off for origins. Only piece payloads are metered.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket

import attrs

from kraken.config import Duration, Size, positive
from kraken.core.address import split_host_port
from kraken.net.endpoints import check_listen, host_port

MIB = 1 << 20


@attrs.frozen
class BandwidthConfig:
    enabled: bool = True
    egress_bits_per_sec: int = attrs.field(default=200 * 8 * MIB, validator=positive)
    ingress_bits_per_sec: int = attrs.field(default=300 * 8 * MIB, validator=positive)


def _no_bandwidth_limit() -> BandwidthConfig:
    return BandwidthConfig(enabled=False)


@attrs.frozen
class P2PConfig:
    # Endpoint description of the P2P listener. Peers on other hosts dial it: it listens on every interface
    # unless an interface is given.
    listen: str = attrs.field(default="tcp:16001", validator=check_listen)
    # The address peers dial, ip:port. Derived from ``listen`` when unset (a wildcard interface becomes this
    # host's address as its name resolves).
    advertise: str | None = None
    # 40 or 64 hex characters; default: SHA-1 of the advertised ip:port, stable across restarts.
    peer_id: str | None = None
    max_conns_per_torrent: int = attrs.field(default=10, validator=positive)
    # A torrent whose slots are all taken still admits this many more connections from peers far behind it
    # (kraken.p2p.slots): a host that came late to a busy swarm is not left with no one to download from.
    catch_up_conns: int = attrs.field(default=2, validator=attrs.validators.ge(0))
    # P2P connections over mutual TLS with the daemon's ``tls`` certificate (needs tls.cert, tls.key, tls.ca);
    # peers are verified against tls.client_ca (or tls.ca) and their advertised IP. Pieces are checked anyway.
    tls: bool = False
    pipeline_limit: int = attrs.field(default=1, validator=positive)
    origin_pipeline_limit: int = attrs.field(default=5, validator=positive)
    # While a client reads a download in order (an agent streaming a blob to containerd), the pieces it waits for
    # and the next ones, this many in all, are asked for first, lowest first; the rest rarest first, as ever.
    # 0: rarest first only. A download nobody reads in order (a HEAD, the agent API) is not changed.
    stream_window: int = attrs.field(default=8, validator=attrs.validators.ge(0))
    # One log line per piece received: from which peer, when it was asked for, its first and last byte, when it
    # was written (bench/netbench.py --piece-log reads them to show where a swarm's time goes). A line per piece.
    piece_log: bool = False
    request_timeout_min: Duration = attrs.field(default=Duration(4.0), validator=positive)
    request_timeout_per_mib: Duration = attrs.field(default=Duration(4.0), validator=positive)
    handshake_timeout: Duration = attrs.field(default=Duration(5.0), validator=positive)
    conn_tti: Duration = attrs.field(default=Duration(30.0), validator=positive)
    seeder_tti: Duration = attrs.field(default=Duration(300.0), validator=positive)
    leecher_tti: Duration = attrs.field(default=Duration(300.0), validator=positive)
    blacklist: Duration = attrs.field(default=Duration(30.0), validator=positive)
    blacklist_max: Duration = attrs.field(default=Duration(300.0), validator=positive)
    dial_hold: Duration = attrs.field(default=Duration(2.0), validator=positive)
    max_pending_dials: int = attrs.field(default=20, validator=positive)
    slot_grace: Duration = attrs.field(default=Duration(5.0), validator=positive)
    slot_idle: Duration = attrs.field(default=Duration(30.0), validator=positive)
    max_conns_per_address: int = attrs.field(default=3, validator=positive)
    max_conns_per_address_total: int = attrs.field(default=256, validator=positive)
    address_limit_exempt: tuple[str, ...] = ("127.0.0.1", "::1")
    busy_backoff: Duration = attrs.field(default=Duration(5.0), validator=positive)
    announce_interval: Duration = attrs.field(default=Duration(5.0), validator=positive)
    max_announce_interval: Duration = attrs.field(default=Duration(60.0), validator=positive)
    underconnected_announce: Duration = attrs.field(default=Duration(1.0), validator=positive)
    # Announces carry a ``progress`` object (pieces, bytes and rates in and out, the peers pieces came from) for
    # the tracker's live swarm page. Off by default: a tracker older than the swarm page refuses the key (400).
    announce_progress: bool = False
    piece_memory: Size = attrs.field(default=Size(8 * MIB), validator=positive)
    # How often connection and torrent TTIs are checked.
    preemption_interval: Duration = attrs.field(default=Duration(5.0), validator=positive)
    bandwidth: BandwidthConfig = attrs.field(factory=BandwidthConfig)
    # A complete seeder declines to send again, for one request timeout, a piece it just sent to a peer that is
    # still connected (the swarm passes it on), so it spends its upload on pieces the swarm lacks. On by default
    # for origins only: an agent that has finished serves whatever it is asked, or the last agents of a large
    # swarm are turned away by every peer that sent their missing pieces to someone else a moment before.
    super_seed: bool = False

    def __attrs_post_init__(self) -> None:
        if self.peer_id is not None:
            from kraken.core.peer import is_peer_id

            if not is_peer_id(self.peer_id):
                raise ValueError(f"peer_id must be 40 or 64 lowercase hex characters, not {self.peer_id!r}")
        if self.advertise is not None:
            split_address(self.advertise)
        if self.blacklist_max < self.blacklist:
            raise ValueError(
                f"blacklist_max ({self.blacklist_max:g} s) must be at least blacklist ({self.blacklist:g} s)"
            )
        for address in self.address_limit_exempt:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"address_limit_exempt: {address!r} is not an IP address") from None

    def advertised(self) -> tuple[str, int]:
        """(ip, port) that peers dial. May resolve this host's name (at startup only)."""
        if self.advertise is not None:
            return split_address(self.advertise)
        derived = host_port(self.listen, "0.0.0.0")
        if derived is None:
            raise ValueError(f"cannot derive an address to advertise from p2p listen {self.listen!r}; set advertise")
        host, port = split_address(derived)
        if host == "0.0.0.0":  # a wildcard listener: this host's address
            host = socket.gethostbyname(socket.gethostname())
        return host, port

    def request_timeout(self, piece_length: int) -> float:
        return max(self.request_timeout_min, self.request_timeout_per_mib * piece_length / MIB)

    def the_peer_id(self) -> str:
        if self.peer_id is not None:
            return self.peer_id
        ip, port = self.advertised()
        return hashlib.sha1(f"{ip}:{port}".encode()).hexdigest()


@attrs.frozen
class OriginP2PConfig(P2PConfig):
    """An origin's P2P section: the same keys, with Kraken's dev-cluster port, no bandwidth limit unless set, and
    super-seeding."""

    listen: str = attrs.field(default="tcp:15001", validator=check_listen)
    bandwidth: BandwidthConfig = attrs.field(factory=_no_bandwidth_limit)
    super_seed: bool = True


def split_address(address: str) -> tuple[str, int]:
    """``10.0.0.5:15001`` or ``[::1]:15001`` -> (ip, port); an IPv6 address without brackets, or with a zone
    id, is refused."""
    try:
        return split_host_port(address)
    except ValueError as e:
        raise ValueError(f"address must be ip:port ([ip]:port for IPv6): {e}") from None
