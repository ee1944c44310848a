"""Storage backends: the ``IBackend`` interface and its errors, name pathers
(docker/distribution's layout), the filesystem backend, the namespace router,
per-backend bandwidth limits and the ``backends:`` config section."""

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
from kraken.backends.names import DockerTagPather, IdentityPather, Pather, ShardedDockerBlobPather, make_pather
from kraken.backends.router import NoBackend, Router

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "BackendError",
    "BackendUnavailable",
    "BlobInfo",
    "BlobNotFound",
    "DockerTagPather",
    "FSBackend",
    "IBackend",
    "IdentityPather",
    "InvalidName",
    "ListPage",
    "NoBackend",
    "Pather",
    "Router",
    "ShardedDockerBlobPather",
    "ThrottledBackend",
    "make_pather",
]
