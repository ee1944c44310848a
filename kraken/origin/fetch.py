"""Fetch on miss: an origin asked for a blob it lacks gets it from the backend.

Kraken's ``lib/blobrefresh``. ``BlobFetcher.ensure(namespace, digest)``:

- the blob is in the store: True;
- a fetch of it is running: False (the HTTP layer answers 202 and clients poll);
- an answer about it is cached (see below): that answer is raised again;
- otherwise the namespace's backend is asked (``stat``) by a new background
  fetch; when it has the blob, ``ensure`` returns False while the fetch
  downloads it. No backend for the namespace, or a backend without the blob,
  raises ``kraken.backends.BlobNotFound`` (404); a backend that cannot
  answer raises ``BackendUnavailable`` (503).

One fetch per digest runs at a time, however many callers ask (single
flight). The fetch downloads the blob into a new upload of the store's upload
area (``uploads/<uid>``; the backend writes a temporary file beside it and
renames it in place), checks its size against the backend's ``stat``, then
commits it with ``CAStore.commit``: the SHA-256 is computed again from the
file in the store's worker, the metainfo is written and the blob appears in
the cache with one atomic rename. A half-written or wrong blob is never
visible: every failure deletes the upload, and an upload left by a crash is
expired by the upload area's TTL like any other.

Answers are cached per (namespace, digest) on the clock, so repeated misses
do not hammer the backend: "not found" (also a digest or size mismatch,
which is logged) for ``error_ttl`` seconds, "unavailable" (and any
unexpected error, which is logged) for ``retry_ttl`` seconds. After that the
backend is asked again. Nothing is scheduled: expiry is checked on use.
A full store (``kraken.files``) is remembered like "unavailable",
for ``retry_ttl`` seconds, as ``OutOfSpace`` (the HTTP layer answers 507):
clients polling the 202 learn it, and do not start a new download each.

A fetched blob is not written back: it came from its backend. The fetcher is
a Service only so that stopping the daemon cancels the fetches in flight.

Serving a fetch while it runs (``growing``): a backend with ``download_growing``
(the ``registry`` backends) tells the fetch's ``kraken.store.growing.GrowingFile``
each byte it has on disk, so that an agent streams the blob from this origin
while it arrives (``kraken.origin.http``, the ``Kraken-Stream`` GET). The file
ends only once the commit checked the digest, so the last byte of such an answer
waits for the proof; a fetch that fails, for whatever reason, ends it with its
error and every reader's connection is aborted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from kraken.backends import BackendUnavailable, BlobNotFound, IBackend, NoBackend, Router
from kraken.core import Digest
from kraken.files import OutOfSpace, is_out_of_space
from kraken.store import CAStore, DigestMismatch
from kraken.store.growing import GrowingFile
from kraken.workers import Worker

__all__ = ["BackendUnavailable", "BlobFetcher", "BlobNotFound"]


class Sources(Protocol):
    """Where a namespace's missing blobs come from: a ``Router`` of backends,
    or ``kraken.origin.cluster.Repair`` (the other origins first)."""

    def backend_for(self, namespace: str) -> IBackend:
        """The source for ``namespace``; ``NoBackend`` when there is none."""
        ...


class _Corrupt(Exception):
    """What the backend sent is not the blob asked for."""


class _Flight:
    """One running fetch. Waiters get fresh Deferreds (never a shared one)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.ok = False  # the blob is in the store
        self._statted: tuple[BaseException | None] | None = None
        self._stat_waiters: list[Deferred[None]] = []
        self._finished = False
        self._done_waiters: list[Deferred[None]] = []
        self.work: Deferred[None] | None = None
        self.growing: GrowingFile | None = None  # while the backend's download may be read as it arrives

    def when_statted(self) -> Deferred[None]:
        """Fires once the backend answered ``stat``: with None if it has the blob, else with its error."""
        d: Deferred[None] = Deferred()
        if self._statted is None:
            self._stat_waiters.append(d)
        else:
            _fire(d, self._statted[0])
        return d

    def statted(self, error: BaseException | None) -> None:
        if self._statted is not None:
            return
        self._statted = (error,)
        waiters, self._stat_waiters = self._stat_waiters, []
        for d in waiters:
            _fire(d, error)

    def when_done(self) -> Deferred[None]:
        """Fires once the fetch ended; cancelling it (a held question that timed out) forgets it."""
        d: Deferred[None] = Deferred(lambda cancelled: self._forget(cancelled))
        if self._finished:
            d.callback(None)
        else:
            self._done_waiters.append(d)
        return d

    def _forget(self, d: Deferred[None]) -> None:
        if d in self._done_waiters:
            self._done_waiters.remove(d)

    def done(self) -> None:
        self._finished = True
        waiters, self._done_waiters = self._done_waiters, []
        for d in waiters:
            if not d.called:  # a waiter may have been cancelled
                d.callback(None)


_MakeError = Callable[[str, Digest], Exception]


def _not_found(namespace: str, digest: Digest) -> Exception:
    return BlobNotFound(namespace, digest.hex)


def _unavailable(message: str) -> _MakeError:
    return lambda namespace, digest: BackendUnavailable(message)


def _no_space(namespace: str, digest: Digest) -> Exception:
    return OutOfSpace(f"this origin cannot store {digest}, fetched from its backend")


def _fire(d: Deferred[None], error: BaseException | None) -> None:
    if d.called:  # cancelled by its caller
        return
    if error is None:
        d.callback(None)
    else:
        d.errback(Failure(error))


class BlobFetcher(Service):
    log = Logger()

    def __init__(
        self,
        store: CAStore,
        router: Router | Sources,
        *,
        worker: Worker,
        clock: IReactorTime,
        error_ttl: float = 15.0,
        retry_ttl: float = 5.0,
        hold: float = 0.0,
    ) -> None:
        """``worker`` does the fetcher's own disk work (checking the
        downloaded size); the store uses its own workers for the rest.
        ``hold``: how long ``ensure`` waits for a running fetch to end before
        it answers False (0: not at all)."""
        self.setName("fetcher")
        self._store = store
        self._router = router
        self._worker = worker
        self._clock = clock
        self._error_ttl = error_ttl
        self._retry_ttl = retry_ttl
        self._hold = hold
        self._flights: dict[Digest, _Flight] = {}
        # (namespace, digest) -> (expires at, the error to raise again)
        self._answers: dict[tuple[str, Digest], tuple[float, _MakeError]] = {}

    # -- the API --

    @property
    def has_backends(self) -> bool:
        """Whether a missing blob may come from a storage backend (not only from the other origins)."""
        return bool(getattr(self._router, "has_backends", True))

    def fetching(self, digest: Digest) -> bool:
        """Whether a fetch of ``digest`` is running."""
        return digest in self._flights

    def when_idle(self, digest: Digest) -> Deferred[None]:
        """A new Deferred that fires once no fetch of ``digest`` runs (at once if none does)."""
        flight = self._flights.get(digest)
        if flight is None:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        return flight.when_done()

    async def fetching_for_peer(self, namespace: str, digest: Digest) -> bool:
        """The P2P scheduler's ``on_missing``: a peer's handshake named a blob the store lacks. Starts the fetch
        like ``ensure``; True while it runs (the peer is told BUSY and comes back), False when the blob is here
        after all or no backend can give it (the peer is told the blob is unknown)."""
        try:
            return not await self.ensure(namespace, digest)
        except (BlobNotFound, BackendUnavailable, OutOfSpace):
            return False

    async def ensure(self, namespace: str, digest: Digest) -> bool:
        """True if the store holds the blob; False while it is being fetched
        (the first call starts the fetch). Raises ``BlobNotFound`` when no
        backend has it, ``BackendUnavailable`` when its backend failed lately.
        While a fetch runs, waits up to ``hold`` seconds for it to end and
        answers as it ended."""
        if await self._store.stat(digest) is not None:
            return True
        self._raise_cached(namespace, digest)
        running = self._flights.get(digest)
        if running is not None:
            return await self._held_within(namespace, digest, running)
        flight = await self._start(namespace, digest)
        return await self._held_within(namespace, digest, flight)

    async def growing(self, namespace: str, digest: Digest) -> GrowingFile | None:
        """The file of the running fetch of ``digest`` (started now if none runs and the store lacks the blob), to
        be read while it arrives; None when there is none to read (the blob is in the store, or its backend cannot
        tell the fetch's progress, or the file failed for its readers). Raises as ``ensure`` does; never waits
        for the fetch's end."""
        if await self._store.stat(digest) is not None:
            return None
        self._raise_cached(namespace, digest)
        flight = self._flights.get(digest)
        if flight is None:
            flight = await self._start(namespace, digest)
        growing = flight.growing
        return growing if growing is not None and growing.live else None

    async def _start(self, namespace: str, digest: Digest) -> _Flight:
        """A new fetch of ``digest``, once its backend answered ``stat`` (raising its error if it failed)."""
        try:
            backend = self._router.backend_for(namespace)
        except NoBackend:
            raise BlobNotFound(namespace, digest.hex) from None
        flight = self._flights[digest] = _Flight(namespace)
        flight.work = Deferred.fromCoroutine(self._fetch(backend, namespace, digest, flight))
        flight.work.addErrback(
            lambda f: self.log.failure("fetch of {digest} failed", f, digest=str(digest), namespace=namespace)
        )
        await flight.when_statted()
        return flight

    async def _held_within(self, namespace: str, digest: Digest, flight: _Flight) -> bool:
        """Whether ``flight`` has put the blob in the store, waiting up to ``hold`` seconds for it to end; raises
        the remembered error of a fetch that failed meanwhile."""
        if flight.ok or self._hold <= 0:
            return flight.ok
        ended = flight.when_done()
        ended.addTimeout(self._hold, self._clock)
        try:
            await ended
        except TimeoutError:
            return False
        if not flight.ok:
            self._raise_cached(namespace, digest)
        return flight.ok

    # -- the fetch --

    async def _fetch(self, backend: IBackend, namespace: str, digest: Digest, flight: _Flight) -> None:
        started = self._clock.seconds()
        error: Exception | None = None
        try:
            info = await backend.stat(namespace, digest.hex)
            if getattr(backend, "download_growing", None) is not None:
                flight.growing = GrowingFile(info.size)
            flight.statted(None)
            self.log.info(
                "fetching {digest} ({bytes} bytes) from its backend",
                digest=str(digest),
                bytes=info.size,
                namespace=namespace,
            )
            await self._download(backend, namespace, digest, info.size, flight.growing)
            flight.ok = True
            if flight.growing is not None:
                flight.growing.end(None)
            self.log.info(
                "fetched {digest} from its backend in {duration:.3f}s (committed)",
                digest=str(digest),
                duration=self._clock.seconds() - started,
                namespace=namespace,
            )
        except CancelledError as e:
            self.log.info("fetch of {digest} cancelled", digest=str(digest), namespace=namespace)
            error = e
        except BlobNotFound:
            error = self._remember(namespace, digest, _not_found, self._error_ttl)
        except (DigestMismatch, _Corrupt) as e:
            self.log.error(
                "backend sent a wrong blob for {digest}: {error}",
                digest=str(digest),
                error=str(e),
                namespace=namespace,
            )
            error = self._remember(namespace, digest, _not_found, self._error_ttl)
        except BackendUnavailable as e:
            self.log.warn("fetch of {digest} failed: {error}", digest=str(digest), error=str(e), namespace=namespace)
            error = self._remember(namespace, digest, _unavailable(str(e)), self._retry_ttl)
        except Exception as e:
            if is_out_of_space(e):
                self.log.warn(
                    "no space left to fetch {digest} from its backend: {error}",
                    digest=str(digest),
                    error=str(e),
                    namespace=namespace,
                )
                error = self._remember(namespace, digest, _no_space, self._retry_ttl)
            else:
                self.log.failure("fetch of {digest} failed", digest=str(digest), namespace=namespace)
                message = f"fetch of {digest} failed: {e}"
                error = self._remember(namespace, digest, _unavailable(message), self._retry_ttl)
        finally:
            del self._flights[digest]
            if flight.growing is not None:
                flight.growing.end(error or BackendUnavailable(f"fetch of {digest} failed"))  # no-op once committed
            flight.statted(error)  # a no-op once the backend's stat answered
            flight.done()

    async def _download(
        self, backend: IBackend, namespace: str, digest: Digest, size: int, growing: GrowingFile | None
    ) -> None:
        uid = await self._store.uploads.create()
        committed = False
        try:
            path = self._store.uploads.path(uid)
            if growing is None:
                await backend.download(namespace, digest.hex, path)
            else:
                await backend.download_growing(namespace, digest.hex, path, growing)  # type: ignore[attr-defined]
            got = await self._worker.run(os.path.getsize, path)
            if got != size:
                raise _Corrupt(f"{got} bytes downloaded, the backend said {size}")
            # The file was replaced whole: the upload's running hash covers none of it. A download that hashed as
            # it wrote (``growing.sha256``) gives the commit its SHA-256; otherwise the commit reads the file.
            sha256 = None if growing is None or digest.algorithm != "sha256" else growing.sha256
            self._store.uploads.replaced(uid, got, sha256)
            result = await self._store.commit(uid, digest)  # deletes the upload on a mismatch
            committed = True
            if not result.created:
                self.log.info("blob {digest} arrived meanwhile; dropped the fetched copy", digest=str(digest))
        finally:
            if not committed:
                await self._store.uploads.delete(uid)

    # -- cached answers --

    def _remember(self, namespace: str, digest: Digest, make: _MakeError, ttl: float) -> Exception:
        """Cache an answer for ``ttl`` seconds; return a fresh exception of it."""
        now = self._clock.seconds()
        for key in [k for k, (expires, _) in self._answers.items() if expires <= now]:
            del self._answers[key]
        if ttl > 0:
            self._answers[(namespace, digest)] = (now + ttl, make)
        return make(namespace, digest)

    def _raise_cached(self, namespace: str, digest: Digest) -> None:
        key = (namespace, digest)
        cached = self._answers.get(key)
        if cached is None:
            return
        expires, make = cached
        if expires <= self._clock.seconds():
            del self._answers[key]
            return
        raise make(namespace, digest)  # a fresh exception each time: no growing traceback

    # -- lifecycle --

    def stopService(self) -> Deferred[object]:
        """Cancel the fetches in flight; fires once they have cleaned up."""
        super().stopService()
        flights = list(self._flights.values())
        waits = [f.when_done() for f in flights]
        for f in flights:
            if f.work is not None:
                f.work.cancel()
        return gatherResults(waits).addCallback(lambda _: None)
