"""The namespace router: which backend stores the blobs of a repository.

An ordered list of (regular expression, backend), as Kraken's
``backend.Manager``: the first expression that matches the whole namespace
wins, so specific namespaces go before catch-alls (``.*`` last).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kraken.backends.base import BackendError, IBackend, ThrottledBackend


class NoBackend(BackendError, LookupError):
    """No configured namespace matches."""

    def __init__(self, namespace: str, patterns: Sequence[str]) -> None:
        known = ", ".join(repr(p) for p in patterns) or "none configured"
        super().__init__(f"no backend for namespace {namespace!r} (namespaces: {known})")
        self.namespace = namespace


class Router:
    def __init__(self, routes: Sequence[tuple[str | re.Pattern[str], IBackend]]) -> None:
        self._routes = [(re.compile(pattern), backend) for pattern, backend in routes]

    @property
    def routes(self) -> list[tuple[re.Pattern[str], IBackend]]:
        return list(self._routes)

    def backend_for(self, namespace: str) -> IBackend:
        """The backend of the first route whose expression matches all of ``namespace``; ``NoBackend`` if none."""
        for pattern, backend in self._routes:
            if pattern.fullmatch(namespace):
                return backend
        raise NoBackend(namespace, [p.pattern for p, _ in self._routes])

    def share_bandwidth(self, parts: int) -> None:
        """Divide every throttled backend's limits by ``parts`` (the origins in the ring)."""
        for _, backend in self._routes:
            if isinstance(backend, ThrottledBackend):
                backend.share(parts)
