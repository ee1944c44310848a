"""The build-index's configuration (``etc/kraken/build-index.yaml``).

Every key is optional; without ``backends`` and ``cluster.nodes`` the
build-index keeps its tags only in its own database, as before.
"""

from __future__ import annotations

import re
import socket
from typing import Any
from urllib.parse import urlsplit

import attrs

from kraken.backends.config import BackendConfig
from kraken.config import Duration, Size, positive
from kraken.net import HTTPClientConfig
from kraken.net.endpoints import check_listen, host_port
from kraken.net.tls import TLSConfig
from kraken.origin.client import check_origins
from kraken.registry.references import DEFAULT_MAX_REFERENCES
from kraken.taskqueue import TaskQueueConfig

#: The longest write-back delay a duplicated tag may ask for (a week).
MAX_DUPLICATE_DELAY = 7 * 86400.0


@attrs.frozen
class WriteBackConfig(TaskQueueConfig):
    """The durable queue that writes accepted tags to their namespace's
    backend (only used when ``backends`` is set). Its tasks live in the tag
    database. ``concurrency`` (tag uploads running at once), ``backoff_min``
    and ``backoff_max`` (a failed upload is tried again after backoff_min,
    doubling per failure up to backoff_max) come from ``TaskQueueConfig``."""


def normalize_url(url: str) -> str:
    """``HTTP://Host:15004/`` -> ``http://host:15004``: how node URLs are compared.
    Raises ``ValueError`` for anything but an http(s) URL with a host."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r} must not have a query or fragment")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def _check_nodes(instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    for i, url in enumerate(value):
        try:
            normalize_url(url)
        except ValueError as e:
            raise ValueError(f"nodes[{i}]: {e}") from None


def _check_advertise(instance: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None:
        try:
            normalize_url(value)
        except ValueError as e:
            raise ValueError(f"advertise: {e}") from None


def _check_attempts(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value}")


@attrs.frozen
class ClusterConfig:
    """The other build-index nodes of this cluster: every tag PUT this node
    accepts is duplicated to them (Kraken's "duplicate put").

    ``nodes`` may list every node, this one included, so that all nodes
    share one file: the entry equal to ``advertise`` (this node's own base
    URL) is skipped. ``advertise`` defaults to ``http://<host>:<port>`` of a
    tcp/ssl ``listen_http`` (a wildcard interface becomes the host name).
    """

    # Base URLs of the build-index nodes, e.g. http://bi-1:15004 (this node may be among them).
    nodes: tuple[str, ...] = attrs.field(default=(), validator=_check_nodes)
    # This node's base URL as written in nodes; derived from listen_http when unset.
    advertise: str | None = attrs.field(default=None, validator=_check_advertise)
    # The k-th other node (1-based, in list order) writes a duplicated tag back after k x this,
    # and only if the backend still lacks the tag: the accepting node usually wins.
    duplicate_stagger: Duration = attrs.field(default=Duration(1200.0), validator=positive)
    # Tries per node and tag while the node refuses the tag (400) before giving up; a node that
    # is down or failing is tried for as long as it takes (the copies are queued in the database).
    duplicate_attempts: int = attrs.field(default=5, validator=_check_attempts)
    # Wait before the second try, doubling per try up to duplicate_backoff_max.
    duplicate_backoff: Duration = attrs.field(default=Duration(10.0), validator=positive)
    duplicate_backoff_max: Duration = attrs.field(default=Duration(300.0), validator=positive)

    def __attrs_post_init__(self) -> None:
        if self.duplicate_stagger * len(self.nodes) > MAX_DUPLICATE_DELAY:
            raise ValueError(
                f"duplicate_stagger x nodes must not exceed {MAX_DUPLICATE_DELAY:.0f}s "
                f"({self.duplicate_stagger}s x {len(self.nodes)})"
            )

    def self_url(self, listen_http: str) -> str | None:
        """This node's base URL, normalized: ``advertise`` or derived from ``listen_http``."""
        if self.advertise is not None:
            return normalize_url(self.advertise)
        derived = host_port(listen_http, socket.gethostname())
        return None if derived is None else normalize_url(f"http://{derived}")

    def neighbours(self, listen_http: str) -> list[str]:
        """The other nodes' base URLs (normalized, duplicates and this node removed), in list order."""
        me = self.self_url(listen_http)
        out: list[str] = []
        for url in self.nodes:
            n = normalize_url(url)
            if n != me and n not in out:
                out.append(n)
        return out


@attrs.frozen
class ReplicationConfig(TaskQueueConfig):
    """The durable queue that replicates tags to remote clusters (``remotes``): ``concurrency`` (tags
    replicated at once), ``backoff_min`` and ``backoff_max`` (a failed try is repeated after backoff_min,
    doubling per failure up to backoff_max, for as long as it takes) come from ``TaskQueueConfig``."""

    # Every this often, a log line per remote with copies pending (depth, lag, failed tries).
    report_interval: Duration = attrs.field(default=Duration(60.0), validator=positive)


_REMOTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _check_remote_name(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not _REMOTE_NAME.fullmatch(value):
        raise ValueError(f"name: {value!r} is not a remote name (letters, digits, '.', '_', '-'; at most 64)")


def _check_regex(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"{attribute.name}: {value!r} is not a valid regular expression ({e})") from None


def _check_build_indexes(instance: object, attribute: attrs.Attribute[Any], value: str | tuple[str, ...]) -> None:
    urls = (value,) if isinstance(value, str) else value
    if not urls:
        raise ValueError("build_index must name at least one build-index")
    for url in urls:
        try:
            normalize_url(url)
        except ValueError as e:
            raise ValueError(f"build_index: {e}") from None


def _check_rate(instance: object, attribute: attrs.Attribute[Size | None], value: Size | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"rate must be positive (bytes per second), not {value}")


@attrs.frozen
class RemoteConfig:
    """Another cluster that receives the tags of matching repositories (Kraken's "remotes"): its
    build-index (one base URL or a list, tried in order) and its origins (any member will do), and
    the TLS this daemon uses to reach them (the remote is another trust domain: its own CA, and a
    client certificate it accepts)."""

    # How log lines, /stats and the queue name this remote.
    name: str = attrs.field(validator=_check_remote_name)
    # A regular expression matching whole repository names whose tags go to this remote.
    repositories: str = attrs.field(validator=_check_regex)
    build_index: str | tuple[str, ...] = attrs.field(validator=_check_build_indexes)
    origins: str | tuple[str, ...] = attrs.field(validator=check_origins)
    tls: TLSConfig = attrs.field(factory=TLSConfig)
    # Bytes per second sent to this remote's origins, all copies together (e.g. 100MiB); none: unlimited.
    rate: Size | None = attrs.field(default=None, validator=_check_rate)

    def matches(self, repo: str) -> bool:
        return re.fullmatch(self.repositories, repo) is not None

    @property
    def build_indexes(self) -> tuple[str, ...]:
        urls = (self.build_index,) if isinstance(self.build_index, str) else self.build_index
        return tuple(normalize_url(u) for u in urls)


def _check_remotes(instance: object, attribute: attrs.Attribute[Any], value: tuple[RemoteConfig, ...]) -> None:
    seen: set[str] = set()
    for i, remote in enumerate(value):
        if remote.name in seen:
            raise ValueError(f"remotes.{i}.name: remote {remote.name!r} is named twice")
        seen.add(remote.name)


@attrs.frozen
class BuildIndexConfig:
    # Endpoint description of the HTTP API (tcp:, ssl:, unix:, systemd: ...).
    listen_http: str = attrs.field(default="tcp:15004:interface=127.0.0.1", validator=check_listen)
    # Base URL of an origin, or a list of them: the origin cluster that holds manifests and blobs
    # (any member knows where each blob lives; the others are asked when one does not answer).
    origin: str | tuple[str, ...] = attrs.field(default="http://127.0.0.1:15002", validator=check_origins)
    # The SQLite database of tags, manifest records and pending tag write-backs; its directory is created.
    database: str = "/var/lib/kraken/build-index/tags.db"
    http_client: HTTPClientConfig = attrs.field(factory=HTTPClientConfig)
    # TLS for this daemon's listeners and clients (kraken.net.tls; absent: plain).
    tls: TLSConfig = attrs.field(factory=TLSConfig)
    # Largest manifest read from the origin when checking a tag.
    max_manifest_size: Size = attrs.field(default=Size(4 << 20), validator=positive)
    # Largest page a listing returns, whatever ``n`` asks for.
    max_page: int = attrs.field(default=1000, validator=positive)
    # A tag whose manifest (or a child of it) names more blobs and child manifests
    # than this is refused before any of them is looked up.
    max_references: int = attrs.field(default=DEFAULT_MAX_REFERENCES, validator=positive)
    # Durable storage of tags, tried in order (the first namespace regex matching the whole
    # repository name wins); same shape as the origin's. Tags are stored in the docker_tag
    # layout whatever an entry's name_path says. None: tags live only in the database.
    backends: tuple[BackendConfig, ...] = ()
    writeback: WriteBackConfig = attrs.field(factory=WriteBackConfig)
    # The other build-index nodes, which get a copy of every accepted tag.
    cluster: ClusterConfig = attrs.field(factory=ClusterConfig)
    # Other clusters that receive the tags (and every blob of their images) of matching
    # repositories; none by default.
    remotes: tuple[RemoteConfig, ...] = attrs.field(default=(), validator=_check_remotes)
    replication: ReplicationConfig = attrs.field(factory=ReplicationConfig)
