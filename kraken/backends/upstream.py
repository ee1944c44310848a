"""Upstream registries named by containerd's ``?ns=``: the repository names the agent builds, and the
``registry`` backend that reads them.

containerd asks a mirror for ``/v2/library/alpine/manifests/3?ns=docker.io``. An agent whose
``upstream_namespaces`` match ``docker.io`` asks the cluster for the repository ``docker.io/library/alpine``
instead (``namespaced_repository``): the registry host becomes the first component of the name, lower-case,
a port written ``_port`` (``127.0.0.1:5000`` -> ``127.0.0.1_5000``) since a repository name has no colon.
The origins and build-index route that name with their ``backends:`` list like any other (``namespace:
"docker\\.io/.+"``) to a ``registry`` entry with ``ns_prefix: true``, which takes the host off again
(``split_namespaced``) before it asks the upstream for ``library/alpine``, and fills ``{ns}`` in its
``address`` with it (one entry, ``address: "https://{ns}"``, serves every host a pattern allows).

``build_registry`` gives the plain ``RegistryBackend`` for an entry without ``ns_prefix`` and ``tag_ttl``
(as before they existed), else ``UpstreamRegistry``: one ``RegistryBackend`` per upstream host (its own
tokens), and tags remembered ``tag_ttl`` seconds on the clock (a tag moved upstream is seen within it; a
tag the upstream lacks is not remembered, so a new one is seen at once). Digests are content addresses:
blobs and manifests fetched by digest are never stale.

Both have ``download_growing``: the download tells a ``kraken.store.growing.GrowingFile`` each byte it has on
disk, which is how an origin serves a blob it is still fetching (``kraken.origin.fetch``).
"""

from __future__ import annotations

import re
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from kraken.backends.base import BlobInfo, BlobNotFound, IBackend, ListPage
from kraken.backends.registry import NS_FIELD, RegistryBackend, RegistryConfig
from kraken.core import Digest
from kraken.singleflight import SingleFlight
from kraken.store.growing import GrowingFile
from kraken.workers import Worker

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")
_PORT_SUFFIX = re.compile(r"^(.+)_([0-9]{1,5})$")


def host_component(ns: str) -> str | None:
    """The repository component standing for registry host ``ns`` (``Docker.IO`` -> ``docker.io``,
    ``127.0.0.1:5000`` -> ``127.0.0.1_5000``); None when it cannot be one (an IPv6 literal)."""
    component = ns.lower().replace(":", "_")
    return component if ns.count(":") <= 1 and _COMPONENT.match(component) else None


def namespaced_repository(ns: str, repo: str) -> str | None:
    """The repository the cluster knows for ``repo`` of registry ``ns``; None when ``ns`` cannot prefix it."""
    component = host_component(ns)
    return None if component is None else f"{component}/{repo}"


def split_namespaced(namespace: str) -> tuple[str, str]:
    """``127.0.0.1_5000/library/alpine`` -> (``127.0.0.1:5000``, ``library/alpine``); a name without a
    repository after its host raises ``ValueError``."""
    component, slash, repo = namespace.partition("/")
    if not slash or not repo:
        raise ValueError(f"{namespace!r} does not start with a registry host and go on with a repository")
    m = _PORT_SUFFIX.match(component)
    return (f"{m.group(1)}:{m.group(2)}" if m else component), repo


def build_registry(config: RegistryConfig, *, http: HTTPClient, clock: IReactorTime, worker: Worker) -> IBackend:
    """The backend of a ``registry`` entry: plain unless it has ``ns_prefix`` or a ``tag_ttl``."""
    if not config.ns_prefix and not config.tag_ttl:
        return RegistryBackend.create(config, http=http, clock=clock, worker=worker)
    return UpstreamRegistry(config, http=http, clock=clock, worker=worker)


@implementer(IBackend)
class UpstreamRegistry:
    """A ``registry`` entry with ``ns_prefix`` (the host taken off the repository names) or ``tag_ttl``."""

    def __init__(self, config: RegistryConfig, *, http: HTTPClient, clock: IReactorTime, worker: Worker) -> None:
        self._config = config
        self._http = http
        self._clock = clock
        self._worker = worker
        self._hosts: dict[str, RegistryBackend] = {}
        self._tags: SingleFlight[tuple[str, str], Digest] = SingleFlight(
            self._resolve, clock=clock, ttl=config.tag_ttl, size=10_000
        )

    def _target(self, namespace: str) -> tuple[RegistryBackend, str]:
        """The backend of the upstream ``namespace`` lives on, and the repository name it knows there."""
        if not self._config.ns_prefix:
            return self._backend(""), namespace
        try:
            host, repo = split_namespaced(namespace)
        except ValueError:
            raise BlobNotFound(namespace, "") from None
        return self._backend(host), repo

    def _backend(self, host: str) -> RegistryBackend:
        backend = self._hosts.get(host)
        if backend is None:
            credentials = self._config.credentials() or ("", "")
            settings = attrs.evolve(
                self._config,
                address=self._config.address.replace(NS_FIELD, host),
                credentials_file="",  # read at start already: no file I/O on the reactor
                username=credentials[0],
                password=credentials[1],
            )
            backend = RegistryBackend.create(settings, http=self._http, clock=self._clock, worker=self._worker)
            self._hosts[host] = backend
        return backend

    async def stat(self, namespace: str, name: str) -> BlobInfo:
        backend, repo = self._target(namespace)
        return await backend.stat(repo, name)

    async def download(self, namespace: str, name: str, path: str) -> None:
        await self.download_growing(namespace, name, path, None)

    async def download_growing(self, namespace: str, name: str, path: str, growing: GrowingFile | None) -> None:
        """``download``, telling ``growing`` each byte on disk: an origin serves the blob while it arrives."""
        backend, repo = self._target(namespace)
        await backend.download_growing(repo, name, path, growing)

    async def upload(self, namespace: str, name: str, path: str) -> None:
        await self._backend("").upload(namespace, name, path)  # read-only: it raises, asking nobody

    async def list(self, prefix: str = "", **options: Any) -> ListPage:
        return await self._backend("").list(prefix, **options)  # read-only: it raises, asking nobody

    async def resolve_tag(self, repo: str, tag: str) -> Digest:
        """The digest ``repo:tag`` points at upstream, remembered ``tag_ttl`` seconds; ``BlobNotFound``
        (never remembered) when the upstream has no such tag."""
        digest: Digest = await self._tags.get((repo, tag))
        return digest

    async def _resolve(self, key: tuple[str, str]) -> Digest:
        namespace, tag = key
        backend, repo = self._target(namespace)
        return await backend.resolve_tag(repo, tag)
