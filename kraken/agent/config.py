"""The agent's configuration (``etc/kraken/agent.yaml``).

YAML keys are the attrs field names below; the ``p2p:`` section is
``kraken.p2p.config.P2PConfig`` (shared with the origin).

Defaults and why:

- every listener is on 127.0.0.1 except P2P: the registry and the agent API
  serve this host's docker/containerd/podman only, while other agents dial
  the P2P port from their own hosts.
- ``store.root`` holds the blob cache and partial downloads. The agent never
  cuts blobs into pieces itself (metainfo comes from the origins), so it has
  no piece-length rule.
- ``max_manifest_size`` 4 MiB, as the proxy: a larger "manifest" is not one.
- ``listen_registry`` must be a loopback address (or a ``unix:`` socket) unless
  ``allow_remote_registry: true``: the agent's registry asks for no
  credentials, so it must not serve other hosts by accident. ``systemd:``
  (an address only the socket unit knows) needs the flag too.
- ``answer_timeout`` 3 s: how long the registry waits for the tracker or the
  build-index (a tag, a blob's size, a manifest) before it answers 503, so
  that containerd tries its next host instead of waiting on a mirror that
  stalls (Spegel bounds its manifest answers at about 3 s too). Downloads of
  layers, once their size is known, are not bounded by it.
- ``upstream_namespaces`` empty: every ``?ns=`` is served by repository name
  alone, as before; a registry host it matches is mirrored through the
  cluster (``kraken.agent.upstreams``).
- ``cleanup`` (``kraken.store.config.CleanupConfig``, the origin's keys) is
  off unless ``enabled: true`` (as before it existed; the shipped agent.yaml
  shows it on): a blob nobody read for 6 h (1 h once the disk is 80 % full)
  leaves the cache, checked every 30 min; blobs being downloaded, seeded or
  served stay. Partial downloads a crashed agent left are collected at start
  unless resumable and written within the TTI.
- ``stream_from_origins`` empty: blobs come through the tracker and peers only, as before. With the origins'
  HTTP base URLs (one is enough: it knows the ring), a blob an origin is still fetching from its backend (the
  first host of an upstream image) is streamed from that origin while it arrives (``kraken.agent.fromorigin``).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs

from kraken.agent.upstreams import check_patterns
from kraken.cluster.services import ServiceAddress, check_service
from kraken.config import Duration, Size, positive
from kraken.net import HTTPClientConfig
from kraken.net.endpoints import check_listen, host_port
from kraken.net.tls import TLSConfig, check_p2p_tls
from kraken.origin.client import check_origins
from kraken.p2p.config import P2PConfig
from kraken.store.config import CleanupConfig

DEFAULT_LISTEN_REGISTRY = "tcp:16000:interface=127.0.0.1"
DEFAULT_LISTEN_API = "tcp:16002:interface=127.0.0.1"


@attrs.frozen
class StoreConfig:
    """Where downloaded blobs live (``cache/``) and are assembled (``downloads/``)."""

    root: str = "/var/lib/kraken/agent"


@attrs.frozen
class ThreadsConfig:
    """Sizes of the named thread pools."""

    cpu: int = attrs.field(default=2, validator=positive)  # piece hashing
    io: int = attrs.field(default=4, validator=positive)  # disk: piece writes and reads, stats


def _check_stream_origins(instance: object, attribute: attrs.Attribute[Any], value: str | tuple[str, ...]) -> None:
    if value:  # empty: off
        check_origins(instance, attribute, value)


def _check_upstreams(instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    try:
        check_patterns(value)
    except ValueError as e:
        raise ValueError(f"{attribute.name}: {e}") from None


@attrs.frozen
class AgentConfig:
    # The read-only Docker registry that this host's container runtime pulls from (loopback only, see below).
    listen_registry: str = attrs.field(default=DEFAULT_LISTEN_REGISTRY, validator=check_listen)
    # Let listen_registry be a non-loopback address: any host that reaches it may pull, without credentials.
    allow_remote_registry: bool = False
    # The agent API: /namespace/<ns>/blobs/<digest>, /health, /readiness, /stats.
    listen_api: str = attrs.field(default=DEFAULT_LISTEN_API, validator=check_listen)
    # The tracker (announces, metainfo) and the build-index (tags): a base URL, a list of them, or a map
    # with hosts (a list) or dns (name:port), scheme, refresh_interval, down_for (kraken.cluster.services).
    tracker: ServiceAddress = attrs.field(default="http://127.0.0.1:15003", validator=check_service)
    build_index: ServiceAddress = attrs.field(default="http://127.0.0.1:15004", validator=check_service)
    store: StoreConfig = attrs.field(factory=StoreConfig)
    max_manifest_size: Size = attrs.field(default=Size(4 << 20), validator=positive)
    # The registry answers 503 (containerd tries its next host) when the tracker or the build-index has not
    # answered within this (a tag, a blob's size, a manifest's bytes).
    answer_timeout: Duration = attrs.field(default=Duration(3.0), validator=positive)
    # Registry hosts (containerd's ?ns=; shell patterns: docker.io, *.example.com, 127.0.0.1:*) whose images
    # the cluster mirrors: a request for <repo> with such an ns is served from the repository <host>/<repo>,
    # which the origins and build-index read from the upstream (a registry backend with ns_prefix: true).
    # Empty: every ns is served by repository name alone.
    upstream_namespaces: tuple[str, ...] = attrs.field(default=(), validator=_check_upstreams)
    # The origins' HTTP base URLs (a list, or one: it knows the ring). A blob an origin is still fetching from its
    # backend (the first host of an upstream image) is then streamed from that origin as it arrives, and
    # containerd's bytes start before the fetch ends. Empty: through the tracker and peers only.
    stream_from_origins: str | tuple[str, ...] = attrs.field(
        default=attrs.Factory(tuple), validator=_check_stream_origins
    )
    threads: ThreadsConfig = attrs.field(factory=ThreadsConfig)
    http_client: HTTPClientConfig = attrs.field(factory=HTTPClientConfig)
    # TLS for this daemon's listeners and clients (kraken.net.tls; absent: plain).
    tls: TLSConfig = attrs.field(factory=TLSConfig)
    p2p: P2PConfig = attrs.field(factory=P2PConfig)
    # Eviction of idle blobs from store.root (with enabled: true). See kraken.store.config.CleanupConfig.
    cleanup: CleanupConfig = attrs.field(factory=CleanupConfig)

    def __attrs_post_init__(self) -> None:
        if not self.allow_remote_registry and not is_local_listener(self.listen_registry):
            raise ValueError(
                f"listen_registry {self.listen_registry!r} is not a loopback address: the agent's registry asks "
                "for no credentials and serves this host only (interface=127.0.0.1 or ::1, or unix:); "
                "set allow_remote_registry: true to expose it anyway"
            )
        check_p2p_tls(self.tls, self.p2p.tls)


def is_local_listener(description: str) -> bool:
    """Whether a server endpoint description listens on loopback only (or on a unix socket)."""
    if description.startswith("unix:"):
        return True
    address = host_port(description, "")
    if address is None:
        return False
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
