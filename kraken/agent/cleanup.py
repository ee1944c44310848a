"""The agent's disk: idle blobs evicted, a crashed agent's partial downloads collected.

The sweep is the origin's (``kraken.store.cleanup.CacheCleanup``: TTI,
disk-usage watermark with a shorter ``aggressive_tti`` above it, eviction by
one atomic rename into ``tmp/``). What the agent adds is what it must keep:

- a blob the scheduler holds a torrent for (being downloaded, or seeded until
  ``p2p.seeder_tti`` after its last use) is kept (``Scheduler.holds``);
- a blob with an open reader (the registry streaming it to a client, or
  reading a manifest) is kept: ``Pins`` counts the readers, and each pin also
  records an access (``CAStore.touch``), so a blob pulled often stays;
- after a sweep, a torrent opened for an evicted blob meanwhile (a peer's
  handshake between the walk and the rename) is dropped (``Scheduler.forget``):
  it is no longer seeded, nor announced.

A reader that opened the blob's file before its rename keeps reading it (the
open file outlives the rename and the delete).

At start (before any download), ``collect_partials`` deletes the partial
downloads that cannot be resumed or were not written within the TTI; a fresh,
resumable one stays and ``DownloadArea.open`` resumes it.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request
from zope.interface import implementer

from kraken.core import Digest
from kraken.p2p.scheduler import Scheduler
from kraken.store import CacheCleanup, collect_partials, disk_usage_percent
from kraken.store.config import CleanupConfig
from kraken.workers import Worker

log = Logger(namespace="kraken.agent.cleanup")


class Pins:
    """Blobs with open readers, counted (reactor thread only)."""

    def __init__(self, touch: Callable[[Digest], Awaitable[object]] | None = None) -> None:
        self._count: Counter[Digest] = Counter()
        self._touch = touch

    def held(self, digest: Digest) -> bool:
        return self._count[digest] > 0

    def pin(self, digest: Digest) -> Callable[[], None]:
        """Pin ``digest`` (and record an access); returns the release, which may be called more than once."""
        self._count[digest] += 1
        if self._touch is not None:
            Deferred.fromCoroutine(_touch(self._touch, digest))
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._count[digest] -= 1
                if self._count[digest] <= 0:
                    del self._count[digest]

        return release

    def resource(self, digest: Digest, inner: IResource) -> IResource:
        """``inner`` (the blob's file), pinned from now until the request it renders finishes (or, never rendered,
        until it is dropped)."""
        return _Pinned(inner, self.pin(digest))


def _forget(scheduler: Scheduler, digests: list[Digest]) -> None:
    for digest in digests:
        scheduler.forget(digest)


async def _touch(touch: Callable[[Digest], Awaitable[object]], digest: Digest) -> None:
    try:
        await touch(digest)
    except Exception as e:  # the blob may be gone already; serving goes on
        log.debug("recording an access to {digest} failed: {error}", digest=str(digest), error=str(e))


@implementer(IResource)
class _Pinned:
    isLeaf = True

    def __init__(self, inner: IResource, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release
        self._dropped = weakref.finalize(self, release)  # never rendered: released when dropped

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        return self._inner.getChildWithDefault(name, request)

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError

    def render(self, request: Request) -> Any:
        self._dropped.detach()  # rendered: released when the request finishes
        release = self._release
        request.notifyFinish().addBoth(lambda _: release())
        return self._inner.render(request)


def agent_cleanup(
    config: CleanupConfig,
    root: str,
    *,
    scheduler: Scheduler,
    pins: Pins,
    worker: Worker,
    clock: Any,
    usage: Callable[[str], float] = disk_usage_percent,
) -> CacheCleanup:
    """The agent's cache cleanup service (named ``cache-cleanup``), after collecting stale partial downloads
    (blocking: call it while composing the agent, before the reactor runs any download)."""
    collected = collect_partials(root, now=clock.seconds(), tti=config.tti)
    if collected:
        log.info("collected {count} partial downloads left by a previous run", count=len(collected))
    cleanup = CacheCleanup(
        root,
        worker=worker,
        clock=clock,
        keep=lambda d: pins.held(d) or scheduler.holds(d),
        interval=config.interval,
        tti=config.tti,
        aggressive_threshold=config.aggressive_threshold,
        aggressive_tti=config.aggressive_tti,
        on_evicted=lambda digests: _forget(scheduler, digests),
        kept_why="in use (downloading, seeding or served)",
        usage=usage,
    )
    cleanup.counts["partials_collected"] = len(collected)
    return cleanup
