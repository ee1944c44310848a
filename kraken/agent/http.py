"""The agent API (Kraken's ``agentserver``), as a Klein app.

Routes (``<ns>`` is a repository name and may contain slashes)::

    GET  /namespace/<ns>/blobs/<digest>   the blob, downloaded through P2P first (HEAD too; Range supported)
    GET  /health                          "OK\\n" while the process runs
    GET  /stats                           the scheduler's counters as JSON

Every error is JSON ``{"error": "..."}``, produced by one ``handle_errors``. ``/readiness`` and ``/metrics``
are served in front of this app, as on every daemon (``kraken.net.metrics``, wired in ``kraken.agent.tap``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.static import File

from kraken.agent.cleanup import Pins
from kraken.agent.source import Downloader, Unavailable, fetch
from kraken.core import Digest, DigestError
from kraken.net.server import HTTPError, json_error, json_response
from kraken.registry.names import is_valid_name


class StatsSource(Protocol):
    """What the API needs of the scheduler besides ``download``."""

    def stats(self) -> Any: ...  # an attrs instance (``kraken.p2p.scheduler.Stats``)


class Scheduler(Downloader, StatsSource, Protocol):
    pass


class AgentHTTP:
    app = Klein()
    log = Logger()

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        pins: Pins | None = None,
        cleanup: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        """``pins``: the readers the cache cleanup respects; ``cleanup()``: its counters, under ``cleanup`` in
        ``/stats`` (absent without one)."""
        self._scheduler = scheduler
        self._pins = pins if pins is not None else Pins()
        self._cleanup = cleanup

    def resource(self) -> IResource:
        return self.app.resource()

    @app.handle_errors(Exception)
    def _error(self, request: IRequest, failure: Failure) -> bytes:
        return json_error(request, failure, self.log)

    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"OK\n"

    @app.route("/stats", methods=["GET"])
    def stats(self, request: IRequest) -> bytes:
        stats = attrs.asdict(self._scheduler.stats())
        if self._cleanup is not None:
            stats["cleanup"] = self._cleanup()
        return json_response(request, 200, stats)

    @app.route("/namespace/<path:ns>/blobs/<d>", methods=["GET", "HEAD"])
    async def get_blob(self, request: IRequest, ns: str, d: str) -> IResource:
        if not is_valid_name(ns):
            raise HTTPError(400, f"invalid namespace {ns!r}")
        try:
            digest = Digest.parse(d)
        except DigestError as e:
            raise HTTPError(400, f"invalid digest: {e}") from None
        try:
            path = await fetch(self._scheduler, ns, digest)
        except Unavailable as e:
            self.log.warn(
                "download of {digest} in {namespace} failed: {error}", digest=str(digest), namespace=ns, error=str(e)
            )
            raise HTTPError(502, f"download of {digest} failed: {e}") from None
        if path is None:
            raise HTTPError(404, f"blob {digest} not found")
        # Klein counts <path:...> as one segment: nothing must be left for File to traverse.
        request.postpath = []
        return self._pins.resource(digest, File(path, defaultType="application/octet-stream"))
