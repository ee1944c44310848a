"""The origin's configuration (``etc/kraken/origin.yaml``).

YAML keys are the attrs field names below; build it with
``kraken.config.build(OriginConfig, kraken.config.load(path))``.
"""

from __future__ import annotations

import os
import socket

import attrs

from kraken.backends.config import BackendConfig
from kraken.cluster.config import ClusterConfig
from kraken.config import Duration, Size, positive
from kraken.core import PieceLengthRule
from kraken.net import HTTPClientConfig
from kraken.net.endpoints import check_listen, host_port
from kraken.net.tls import TLSConfig, check_p2p_tls
from kraken.p2p.config import OriginP2PConfig
from kraken.store.config import CleanupConfig
from kraken.taskqueue import TaskQueueConfig

DEFAULT_LISTEN_HTTP = "tcp:15002:interface=127.0.0.1"


def _default_piece_lengths() -> dict[Size, Size]:
    return {Size(size): Size(length) for size, length in PieceLengthRule.default().steps}


def _check_piece_lengths(instance: object, attribute: object, value: dict[Size, Size]) -> None:
    try:
        PieceLengthRule.from_mapping({int(k): int(v) for k, v in value.items()})
    except ValueError as e:  # build() reports it with the file and the section's key path
        raise ValueError(f"piece_lengths: {e}") from None


@attrs.frozen
class StoreConfig:
    """Where the blobs live, and how they are cut into pieces."""

    root: str = "/var/lib/kraken/origin"
    # blob size -> piece length; the largest key not above a blob's size wins; a key 0 is required.
    piece_lengths: dict[Size, Size] = attrs.field(factory=_default_piece_lengths, validator=_check_piece_lengths)

    def piece_rule(self) -> PieceLengthRule:
        return PieceLengthRule.from_mapping({int(k): int(v) for k, v in self.piece_lengths.items()})


@attrs.frozen
class ThreadsConfig:
    """Sizes of the named thread pools."""

    cpu: int = attrs.field(default=2, validator=positive)  # hashing
    io: int = attrs.field(default=4, validator=positive)  # disk: uploads, commits, stats


@attrs.frozen
class WriteBackConfig(TaskQueueConfig):
    """The durable queue that uploads committed blobs to their backend
    (only used when ``backends`` is set). ``concurrency`` (uploads running
    at once), ``backoff_min`` and ``backoff_max`` (a failed upload is tried
    again after backoff_min, doubling per failure up to backoff_max) come
    from ``TaskQueueConfig``."""

    # The SQLite database of pending tasks; default <store.root>/writeback.db. Its directory is created.
    database: str | None = None
    # A replica's copy of a blob (sent by the origin that took the upload) is written back only after
    # replica_delay x k (k = 1, 2... its place among the other replicas), if the backend lacks it by then.
    replica_delay: Duration = attrs.field(default=Duration(1800.0))


@attrs.frozen
class RepairConfig:
    """Background repair of the origin ring (``kraken.origin.repair``; only with a ``cluster``): this origin
    walks its store and copies each blob it holds to the members of the blob's placement that lack it."""

    enabled: bool = True
    # How often the store is walked when nothing happens (a walk also follows every change of the members).
    interval: Duration = attrs.field(default=Duration(3600.0), validator=positive)
    # A member marked unhealthy for at least this long is repaired when it is healthy again (it may be a new,
    # empty one); one back sooner is left to the next walk and to fetch on miss, so a flapping member is not flooded.
    grace: Duration = attrs.field(default=Duration(300.0), validator=attrs.validators.ge(Duration(0.0)))
    # Copies sent at once.
    concurrency: int = attrs.field(default=2, validator=positive)
    # Bytes per second all copies share (0: unlimited).
    rate: Size = attrs.field(default=Size(0), validator=attrs.validators.ge(Size(0)))
    # A progress line in the log at most this often during a walk.
    progress: Duration = attrs.field(default=Duration(10.0), validator=positive)


@attrs.frozen
class OriginConfig:
    # Endpoint description (strports): tcp:, tcp6:, ssl:, unix:, systemd:.
    listen_http: str = attrs.field(default=DEFAULT_LISTEN_HTTP, validator=check_listen)
    # host:port other components reach this origin at (Origin-Locations). Derived from a tcp/ssl
    # listen_http when unset; required for unix:/systemd: listeners.
    advertise: str | None = None
    store: StoreConfig = attrs.field(factory=StoreConfig)
    # An upload untouched for this long is deleted.
    upload_ttl: Duration = attrs.field(default=Duration(3600.0), validator=positive)
    threads: ThreadsConfig = attrs.field(factory=ThreadsConfig)
    http_client: HTTPClientConfig = attrs.field(factory=HTTPClientConfig)
    # TLS for this daemon's listeners and clients (kraken.net.tls; absent: plain).
    tls: TLSConfig = attrs.field(factory=TLSConfig)
    # The P2P listener that seeds this origin's blobs to agents (no bandwidth limit unless set).
    p2p: OriginP2PConfig = attrs.field(factory=OriginP2PConfig)
    # Durable storage behind this origin, tried in order (first matching namespace wins);
    # none: blobs live only here. See kraken.backends.config.
    backends: tuple[BackendConfig, ...] = ()
    # A question about a blob being fetched from its backend waits this long for the fetch to end before the
    # answer is 202 "ask again" (so the first client hears of the blob when it lands, not at its next poll).
    fetch_hold: Duration = attrs.field(default=Duration(2.0), validator=attrs.validators.ge(Duration(0.0)))
    # Agents streaming one blob from this origin while it fetches it (their ``stream_from_origins``), at most; the
    # others hear 204 and wait for the blob peer to peer, so a thousand hosts pulling a new image at once do not
    # make a thousand copies of it on this origin's link. 0: no agent streams.
    fetch_streams: int = attrs.field(default=1, validator=attrs.validators.ge(0))
    writeback: WriteBackConfig = attrs.field(factory=WriteBackConfig)
    # Eviction of idle blobs; off by default without backends (the only copy). See CleanupConfig.
    cleanup: CleanupConfig = attrs.field(factory=CleanupConfig)
    # The origin cluster (hash ring) this origin belongs to; none: it is alone. See kraken.cluster.config.
    # Its members are the origins' advertise addresses, this one's included.
    cluster: ClusterConfig | None = None
    # Background repair of the ring (only with a cluster). See RepairConfig.
    repair: RepairConfig = attrs.field(factory=RepairConfig)

    def cleanup_enabled(self) -> bool:
        """Whether idle blobs are evicted: ``cleanup.enabled``, else only with backends."""
        if self.cleanup.enabled is not None:
            return self.cleanup.enabled
        return bool(self.backends)

    def writeback_database(self) -> str:
        """Where the write-back queue keeps its tasks."""
        if self.writeback.database is not None:
            return self.writeback.database
        return os.path.join(self.store.root, "writeback.db")

    def __attrs_post_init__(self) -> None:
        check_p2p_tls(self.tls, self.p2p.tls)
        if self.cluster is not None and self.tls.cert is not None and self.cluster.scheme == "http":
            # Every member listens with TLS (one config for the ring): plain calls would all be refused.
            raise ValueError("cluster.scheme is http, but tls.cert makes every member listen with TLS: set https")
        me = self.advertised()  # fail at load time, not at the first locations request
        if self.cluster is not None and self.cluster.hosts is not None and me not in self.cluster.hosts:
            raise ValueError(
                f"cluster.hosts {list(self.cluster.hosts)} must include this origin's advertise address {me!r}"
            )

    def advertised(self) -> str:
        """The ``host:port`` this origin advertises."""
        if self.advertise is not None:
            if not self.advertise.strip():
                raise ValueError("advertise must not be empty")
            return self.advertise
        derived = host_port(self.listen_http, socket.gethostname())
        if derived is None:
            raise ValueError(
                f"cannot derive a host:port to advertise from listen_http {self.listen_http!r}; set 'advertise'"
            )
        return derived
