"""Storage backends: the ``IBackend`` interface and its errors, name pathers
(docker/distribution's layout), the filesystem backend, the namespace router,
the WebHDFS backend, the read-only HTTP and upstream-registry backends, per-backend bandwidth
limits and the ``backends:`` config section."""

from kraken.backends.base import (
    DEFAULT_LIST_LIMIT,
    BackendError,
    BackendUnavailable,
    BlobInfo,
    BlobNotFound,
    IBackend,
    InvalidName,
    ListPage,
    ThrottledBackend,
)
from kraken.backends.fs import FSBackend
from kraken.backends.hdfs import HDFSBackend, HDFSConfig
from kraken.backends.http import HTTPBackend, HTTPBackendConfig
from kraken.backends.names import DockerTagPather, IdentityPather, Pather, ShardedDockerBlobPather, make_pather
from kraken.backends.registry import RegistryBackend, RegistryConfig
from kraken.backends.router import NoBackend, Router

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "BackendError",
    "BackendUnavailable",
    "BlobInfo",
    "BlobNotFound",
    "DockerTagPather",
    "FSBackend",
    "HDFSBackend",
    "HDFSConfig",
    "HTTPBackend",
    "HTTPBackendConfig",
    "IBackend",
    "IdentityPather",
    "InvalidName",
    "ListPage",
    "NoBackend",
    "Pather",
    "RegistryBackend",
    "RegistryConfig",
    "Router",
    "ShardedDockerBlobPather",
    "ThrottledBackend",
    "make_pather",
]
