"""Which ``?ns=`` registries the agent mirrors through the cluster (``upstream_namespaces``).

For a request whose ``ns`` matches one of the patterns (``docker.io``, ``*.example.com``, ``127.0.0.1:*``:
shell-style, case-insensitive, on the whole ``host[:port]``), the agent serves the repository
``<host>/<repo>`` instead of ``<repo>``: ``/v2/library/alpine/manifests/3?ns=docker.io`` is answered as
``/v2/docker.io/library/alpine/manifests/3``. The build-index and the origins route that name to the
upstream registry in their ``backends:`` (a ``registry`` entry with ``ns_prefix: true``, see
``kraken.backends.upstream``): the tag is resolved upstream, the first host's blobs go through the origins
once, and every other host gets them peer to peer.

Requests without ``ns``, or with an ``ns`` no pattern matches, are served by repository name alone, as
before (images pushed to the Kraken proxy).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fnmatch import fnmatchcase

from twisted.web.server import Request

from kraken.backends.upstream import host_component
from kraken.registry.routing import match_route

_PATTERN = re.compile(r"^[A-Za-z0-9.\-:*?\[\]]+$")


def check_patterns(patterns: Sequence[str]) -> None:
    """ValueError naming the first pattern that cannot match a registry host."""
    for pattern in patterns:
        if not isinstance(pattern, str) or not _PATTERN.match(pattern):
            raise ValueError(
                f"{pattern!r} is not a registry host pattern (letters, digits, '.', '-', ':', and the shell "
                "wildcards '*', '?', '[...]'; e.g. docker.io, *.example.com, 127.0.0.1:*)"
            )


class UpstreamNamespaces:
    """The ``upstream_namespaces`` patterns, and the request rewrite they call for."""

    def __init__(self, patterns: Sequence[str]) -> None:
        check_patterns(patterns)
        self._patterns = tuple(p.lower() for p in patterns)

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def prefix(self, ns: str) -> str | None:
        """The repository component for ``ns`` when it is an upstream namespace, else None."""
        host = ns.lower()
        if not any(fnmatchcase(host, p) for p in self._patterns):
            return None
        return host_component(host)

    def rewrite(self, request: Request, ns: str) -> str | None:
        """Point ``request`` (a registry route inside a repository) at ``<host>/<repo>``; the new
        repository path's prefix, or None when the request is left alone."""
        component = self.prefix(ns)
        if component is None:
            return None
        route = match_route(request.path)
        if route is None or not route.has_name:
            return None
        encoded = component.encode("ascii")
        request.path = b"/v2/" + encoded + request.path[len(b"/v2") :]
        postpath = list(request.postpath or [])
        if postpath[:1] == [b"v2"]:
            request.postpath = [b"v2", encoded, *postpath[1:]]
        return component
