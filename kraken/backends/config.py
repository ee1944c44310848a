"""The ``backends:`` section of a component's YAML, and the router built from it.

A component that stores to backends (origin, build-index) has a field
``backends: tuple[BackendConfig, ...] = ()``; its YAML is a list, tried in
order (the first ``namespace`` that matches the whole repository name wins)::

    backends:
      - namespace: "library/.*"
        fs: {root: /var/lib/registry, name_path: sharded_docker_blob}
        bandwidth: {enabled: true, egress_bits_per_sec: 8000000000, ingress_bits_per_sec: 80000000000}
      - namespace: ".*"
        fs: {root: /srv/blobs, name_path: identity}

Each entry sets exactly one backend kind: ``fs``, ``s3`` (``S3Config``),
``http`` (read-only, ``HTTPBackendConfig``), ``hdfs`` (WebHDFS,
``HDFSConfig``) or ``registry`` (an upstream
Docker registry, read-only, ``RegistryConfig``). ``namespace`` is a
Python regular expression (for the usual patterns the same as Kraken's Go
ones); it must compile. Bandwidth limits are off unless ``enabled``; when on,
the defaults are Kraken's for object stores: 8 Gbit/s out, 80 Gbit/s in.

The kinds that talk HTTP (s3, hdfs, http, registry) share the daemon's injected
treq ``HTTPClient``: ``build_router(..., http=client)``; building one of them
without it is a ``ValueError``. Each kind's own ``http_client`` settings give
its timeouts and retries.

Adding a kind: give ``BackendConfig`` a field
``<kind>: <Kind>Config | None = None`` and ``BUILDERS`` an entry
``"<kind>": <function (settings, worker, clock, http) -> IBackend>``; the
one-kind check covers every field but ``namespace`` and ``bandwidth``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime

from kraken.backends.base import IBackend, ThrottledBackend
from kraken.backends.fs import FSBackend
from kraken.backends.hdfs import HDFSBackend, HDFSConfig
from kraken.backends.http import HTTPBackend, HTTPBackendConfig
from kraken.backends.names import PATHERS, make_pather
from kraken.backends.registry import RegistryConfig
from kraken.backends.router import Router
from kraken.backends.s3 import S3Backend, S3Config
from kraken.backends.upstream import build_registry
from kraken.config import positive
from kraken.throttle import TokenBucket
from kraken.workers import Worker

GBIT = 10**9


@attrs.frozen
class BackendBandwidthConfig:
    enabled: bool = False
    egress_bits_per_sec: int = attrs.field(default=8 * GBIT, validator=positive)
    ingress_bits_per_sec: int = attrs.field(default=80 * GBIT, validator=positive)


def _check_root(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value:
        raise ValueError(f"{attribute.name} must name a directory")


def _check_name_path(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in PATHERS:
        raise ValueError(f"{attribute.name} must be one of {', '.join(sorted(PATHERS))}, not {value!r}")


@attrs.frozen
class FSBackendConfig:
    # The directory blobs are stored under (created on the first upload).
    root: str = attrs.field(validator=_check_root)
    # The layout: sharded_docker_blob (blobs), docker_tag (tags) or identity.
    name_path: str = attrs.field(validator=_check_name_path)


def _check_regex(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"{attribute.name}: {value!r} is not a valid regular expression ({e})") from None


@attrs.frozen
class BackendConfig:
    namespace: str = attrs.field(validator=_check_regex)
    fs: FSBackendConfig | None = None
    s3: S3Config | None = None
    hdfs: HDFSConfig | None = None
    http: HTTPBackendConfig | None = None
    registry: RegistryConfig | None = None
    bandwidth: BackendBandwidthConfig = attrs.field(factory=BackendBandwidthConfig)

    def __attrs_post_init__(self) -> None:
        self.kind()

    def kind(self) -> tuple[str, Any]:
        """The backend kind this entry sets and its settings."""
        kinds = [f.name for f in attrs.fields(type(self)) if f.name not in _NOT_KINDS]
        chosen = [(k, getattr(self, k)) for k in kinds if getattr(self, k) is not None]
        if len(chosen) != 1:
            found = " and ".join(k for k, _ in chosen) or "none"
            raise ValueError(f"set exactly one backend kind ({', '.join(kinds)}) per entry, found {found}")
        return chosen[0]


_NOT_KINDS = frozenset({"namespace", "bandwidth"})


def _build_fs(settings: FSBackendConfig, worker: Worker, clock: IReactorTime, http: HTTPClient | None) -> IBackend:
    return FSBackend(settings.root, make_pather(settings.name_path), worker=worker)


def _need_http(kind: str, http: HTTPClient | None) -> HTTPClient:
    if http is None:
        raise ValueError(f"the {kind} backend talks HTTP: build it with http=<the daemon's treq HTTPClient>")
    return http


def _build_s3(settings: S3Config, worker: Worker, clock: IReactorTime, http: HTTPClient | None) -> IBackend:
    return S3Backend.create(settings, http=_need_http("s3", http), clock=clock, worker=worker)


def _build_hdfs(settings: HDFSConfig, worker: Worker, clock: IReactorTime, http: HTTPClient | None) -> IBackend:
    return HDFSBackend.create(settings, http=_need_http("hdfs", http), clock=clock, worker=worker)


def _build_http(settings: HTTPBackendConfig, worker: Worker, clock: IReactorTime, http: HTTPClient | None) -> IBackend:
    return HTTPBackend.create(settings, http=_need_http("http", http), clock=clock, worker=worker)


def _build_registry(settings: RegistryConfig, worker: Worker, clock: IReactorTime, http: HTTPClient | None) -> IBackend:
    return build_registry(settings, http=_need_http("registry", http), clock=clock, worker=worker)


Builder = Callable[[Any, Worker, IReactorTime, "HTTPClient | None"], IBackend]
BUILDERS: dict[str, Builder] = {
    "fs": _build_fs,
    "s3": _build_s3,
    "hdfs": _build_hdfs,
    "http": _build_http,
    "registry": _build_registry,
}


def build_backend(
    entry: BackendConfig, worker: Worker, clock: IReactorTime, *, http: HTTPClient | None = None
) -> IBackend:
    """The backend of one entry, behind token buckets if its bandwidth limit is on.
    ``http`` is the treq client of the kinds that talk HTTP (s3, hdfs, http, registry)."""
    kind, settings = entry.kind()
    backend = BUILDERS[kind](settings, worker, clock, http)
    bandwidth = entry.bandwidth
    if not bandwidth.enabled:
        return backend
    # Bytes per second; a burst of one second's worth, as the P2P limits.
    egress, ingress = bandwidth.egress_bits_per_sec / 8, bandwidth.ingress_bits_per_sec / 8
    return ThrottledBackend(
        backend,
        ingress=TokenBucket(ingress, ingress, clock=clock),
        egress=TokenBucket(egress, egress, clock=clock),
        worker=worker,
    )


def build_router(
    configs: Sequence[BackendConfig], worker: Worker, clock: IReactorTime, *, http: HTTPClient | None = None
) -> Router:
    """A router over the backends ``configs`` describe, in their order. Raises
    ``ValueError`` if a kind that talks HTTP is configured and ``http`` is None."""
    return Router([(entry.namespace, build_backend(entry, worker, clock, http=http)) for entry in configs])
