"""Cross-cluster replication (Kraken's "remotes"): tags of matching repositories, with every blob of
their images, copied to other clusters through a durable queue.

A tag a client puts on this build-index whose repository matches a remote's ``repositories`` regex is
queued for that remote in the tag database's outbox (``kraken.buildindex.outbox``, kind ``remote``,
``dest`` the remote's name) in the same transaction that stores the tag; the queue holds the latest
digest per (remote, repo, tag), so a tag moved while its replication waits is replicated once, with its
latest value. This loop (``kraken.taskqueue.TaskQueue``) replicates each queued tag:

1. the manifest closure is read from this cluster's origin: the tagged manifest, its child manifests
   (an index's), their configs and layers (foreign layers with ``urls`` excluded), and the referrers
   this build-index recorded for any of those manifests, with their own closures; a manifest whose
   content does not hash to its digest fails the try;
2. the remote's origins are asked which of those blobs they hold (``POST /blobs/stat``, batched); each
   missing one is streamed from this cluster's origin straight into an upload to the remote's origin
   cluster, in one pass with back-pressure both ways and paced by the remote's ``rate``
   (``kraken.buildindex.pipe``); the remote's origin checks its SHA-256 before storing it (and places
   it on its replicas), so nothing is hashed or written to disk here; a blob the remote has is never
   sent again;
3. the manifest records this build-index holds for those manifests are put on the remote's build-index
   (so its referrers listing answers as here);
4. the tag is put on the remote's build-index through its internal remote route, which checks the
   closure against the remote's own origins again: a remote never serves a tag whose blobs are missing.

A try that fails anywhere (either cluster down, a refusal, garbage) is repeated after ``backoff_min``
doubling up to ``backoff_max``, for as long as it takes; the queue survives restarts. A copy for a
remote no longer configured is dropped with one log line.

Observability: per remote, tags replicated, blobs and bytes sent, blobs already there and failed tries
(``ReplicationStats.remotes``); queue depth and lag (the age of the oldest pending copy) come from the
outbox (``Replicator.report()``, in ``GET /internal/replication``), and every ``report_interval`` a
line per remote with copies pending is logged.

Loops are impossible by construction: only a tag a client put here is ever queued to remotes. A tag
received from a remote (the internal remote route, ``TagIndex.replicate``) is stored with its source
marked and copied to this cluster's other nodes, but never queued to a remote; a duplicate from another
node is never queued to anything. So every replicated write is exactly one hop from the cluster where
a client pushed it, whatever the remotes of each cluster say.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.web._newclient import RequestGenerationFailed, ResponseFailed
from twisted.web.iweb import UNKNOWN_LENGTH

from kraken.backends.remote import Discard
from kraken.buildindex.config import RemoteConfig
from kraken.buildindex.outbox import REMOTE, Copy, Outbox, OutboxQueue, OutboxTask
from kraken.buildindex.pipe import BodyPipe, PipeBroken
from kraken.core import Digest
from kraken.net import HTTPStatusError
from kraken.net.retry import NETWORK_ERRORS
from kraken.registry.errors import RegistryError
from kraken.registry.manifests import ParsedManifest, manifest_closure, parse_manifest
from kraken.registry.source import ManifestRecord
from kraken.throttle import TokenBucket, Unlimited

if TYPE_CHECKING:
    from kraken.buildindex.client import BuildIndexClient
    from kraken.buildindex.tags import TagStore
    from kraken.origin.client import ClusterClient

#: Child manifests are followed this many levels below the tagged manifest.
MAX_DEPTH = 4
#: Requests one question about a remote's blobs may have in flight.
STAT_CONCURRENCY = 8
#: The longest error text recorded with a queued copy.
MAX_ERROR = 500


class ReplicationError(Exception):
    """A try that cannot complete now (retried later): a blob missing here, garbage from an origin."""


class Records(Protocol):
    """What replication reads of the tag store: referrers and manifest records."""

    async def referrers(self, repo: str, subject: Digest) -> list[ManifestRecord]: ...

    async def get_manifest(self, repo: str, digest: Digest) -> ManifestRecord | None: ...


@attrs.frozen
class Remote:
    """A configured remote and the clients that reach it."""

    config: RemoteConfig
    build_indexes: Sequence[BuildIndexClient]
    origin: ClusterClient
    # Paces the bytes sent to this remote (its ``rate``); unlimited by default.
    bucket: TokenBucket | Unlimited = attrs.field(factory=Unlimited)

    @property
    def name(self) -> str:
        return self.config.name


@attrs.define
class RemoteStats:
    """One remote's counters since the loop started."""

    replicated: int = 0  # tags put on the remote
    blobs_sent: int = 0  # blobs uploaded to its origins
    bytes_sent: int = 0
    blobs_present: int = 0  # blobs it already had (not sent)
    failures: int = 0  # failed tries (each tried again later)


@attrs.define
class ReplicationStats(RemoteStats):
    """Counters since the loop started: all remotes', and each remote's in ``remotes``."""

    dropped: int = 0  # copies for remotes no longer configured
    remotes: dict[str, RemoteStats] = attrs.field(factory=dict)

    def of(self, remote: str) -> RemoteStats:
        return self.remotes.setdefault(remote, RemoteStats())

    def add(self, remote: str, **counts: int) -> None:
        """Add ``counts`` (field names of ``RemoteStats``) to the totals and to ``remote``'s."""
        mine = self.of(remote)
        for name, n in counts.items():
            setattr(self, name, getattr(self, name) + n)
            setattr(mine, name, getattr(mine, name) + n)


@attrs.frozen
class Backlog:
    """A remote's queue: copies pending, and the age in seconds of the oldest (0 when none)."""

    pending: int = 0
    lag: float = 0.0


@attrs.define
class Closure:
    """What a tag needs: its manifests (the tagged one first) and blobs, each once."""

    manifests: list[Digest] = attrs.field(factory=list)
    blobs: list[Digest] = attrs.field(factory=list)

    def all(self) -> list[Digest]:
        return list(dict.fromkeys([*self.manifests, *self.blobs]))


async def read_closure(
    origin: ClusterClient, records: Records, repo: str, digest: Digest, *, max_manifest_size: int
) -> Closure:
    """The closure of ``digest`` in ``repo`` as this cluster's origin and tag store know it."""

    async def read(d: Digest, media_type: str | None) -> ParsedManifest:
        body = await origin.read_small(repo, d, max_manifest_size)
        if body is None:
            raise ReplicationError(f"manifest {d} of {repo} is missing on this cluster's origin")
        try:
            parsed = parse_manifest(body, None, d.algorithm)
        except RegistryError as e:
            raise ReplicationError(f"manifest {d} of {repo} is invalid: {e.message}") from None
        if parsed.digest != d:
            raise ReplicationError(f"this cluster's origin answered {parsed.digest} for {d}")
        return parsed

    async def referrers(d: Digest) -> list[Digest]:
        return [r.digest for r in await records.referrers(repo, d)]

    closure = Closure()
    closure.manifests, closure.blobs = await manifest_closure(read, digest, max_depth=MAX_DEPTH, more=referrers)
    return closure


class Replicator(OutboxQueue):
    """Replicates the queued tags to ``remotes`` (see the module docstring). ``source`` names this
    cluster on the remotes; ``body_timeout`` fails a copy whose source stalls that long. Start it
    after the tag store; ``kick()`` after a tag was stored with ``copies(repo)``."""

    what = "replication"
    task_name = "replication of {namespace}:{tag} to {remote}"
    dest_field = "remote"
    expected_errors = (
        ReplicationError, HTTPStatusError, RegistryError, PipeBroken, ConnectionError, TimeoutError, *NETWORK_ERRORS,
        RequestGenerationFailed, ResponseFailed,
    )  # fmt: skip
    max_error = MAX_ERROR

    def __init__(
        self,
        remotes: Sequence[Remote],
        outbox: Outbox,
        tags: TagStore | Records,
        origin: ClusterClient,
        *,
        source: str,
        clock: IReactorTime,
        max_manifest_size: int,
        concurrency: int = 4,
        backoff_min: float = 1.0,
        backoff_max: float = 300.0,
        body_timeout: float = 60.0,
        report_interval: float = 60.0,
    ) -> None:
        self.stats = ReplicationStats()
        super().__init__(outbox, clock, self.stats, concurrency, backoff_min, backoff_max)
        self.setName("replication")
        self._remotes = {r.name: r for r in remotes}
        self._records = tags
        self._origin = origin
        self._source = source
        self._max_manifest_size = max_manifest_size
        self._body_timeout = body_timeout
        self._report_interval = report_interval
        self._reporter: LoopingCall | None = None

    @property
    def remotes(self) -> list[str]:
        return list(self._remotes)

    def copies(self, repo: str) -> list[Copy]:
        """The outbox rows a tag of ``repo`` accepted from a client gets: one per matching remote."""
        return [Copy(REMOTE, name) for name, r in self._remotes.items() if r.config.matches(repo)]

    async def backlog(self) -> dict[str, Backlog]:
        """Each configured remote's queue (and any other destination still in the outbox)."""
        now = self._clock.seconds()
        found = {name: Backlog() for name in self._remotes}
        for dest, (n, oldest) in (await self._outbox.summary()).items():
            found[dest] = Backlog(n, max(0.0, now - oldest))
        return found

    async def report(self) -> dict[str, dict[str, Any]]:
        """Per remote: its counters, queue depth (``pending``) and ``lag`` (seconds)."""
        return {
            name: {**attrs.asdict(self.stats.of(name)), "pending": b.pending, "lag": round(b.lag, 3)}
            for name, b in (await self.backlog()).items()
        }

    # -- the service ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._reporter = LoopingCall(lambda: Deferred.fromCoroutine(self._log_backlog()))
        self._reporter.clock = self._clock
        self._reporter.start(self._report_interval, now=False).addErrback(
            lambda f: self.log.failure("replication report failed", f)
        )

    def stopService(self) -> Deferred[Any]:
        if self._reporter is not None and self._reporter.running:
            self._reporter.stop()
        self._reporter = None
        return super().stopService()

    async def _log_backlog(self) -> None:
        """A line per remote with copies pending: depth, lag, failed tries so far."""
        for name, b in (await self.backlog()).items():
            if b.pending:
                self.log.info(
                    "replication to {remote}: {pending} pending, the oldest for {lag:.0f}s; {failures} failed tries,"
                    " {bytes} bytes sent since start",
                    remote=name, pending=b.pending, lag=b.lag, failures=self.stats.of(name).failures,
                    bytes=self.stats.of(name).bytes_sent,
                )  # fmt: skip

    # -- OutboxQueue -------------------------------------------------------

    async def _run(self, task: OutboxTask) -> None:
        name, fields = self._describe(task)
        remote = self._remotes.get(task.dest)
        if remote is None:
            await self._drop(task, "no such remote is configured")
            return
        started = self._clock.seconds()
        try:
            sent, present = await self._replicate(remote, task)
        except CancelledError:
            raise  # stopping: the copy stays queued and runs at the next start
        except Exception as e:
            self.stats.of(task.dest).failures += 1  # the total is counted by _failed
            await self._failed(task, e, Failure())
            return
        self.stats.add(task.dest, replicated=1)
        self.log.info(
            name + " -> {digest} done: {sent} blobs sent, {present} there already ({duration:.3f}s)",
            sent=sent, present=present, duration=self._clock.seconds() - started, **fields,
        )  # fmt: skip
        await self._outbox.done(task)

    # -- one replication ----------------------------------------------------

    async def _replicate(self, remote: Remote, task: OutboxTask) -> tuple[int, int]:
        """Blobs first, then records, then the tag; (blobs sent, blobs the remote had)."""
        closure = await read_closure(
            self._origin, self._records, task.repo, task.digest, max_manifest_size=self._max_manifest_size
        )
        digests = closure.all()
        sizes = await remote.origin.stat_many(task.repo, digests, concurrency=STAT_CONCURRENCY)
        missing = [d for d in digests if sizes.get(d) is None]
        for d in missing:
            await self._copy_blob(remote, task.repo, d)
        self.stats.add(remote.name, blobs_present=len(digests) - len(missing))
        records = [await self._records.get_manifest(task.repo, m) for m in closure.manifests]
        await self._on_build_index(remote, lambda c: self._put(c, task, [r for r in records if r is not None]))
        return len(missing), len(digests) - len(missing)

    async def _put(self, client: BuildIndexClient, task: OutboxTask, records: list[ManifestRecord]) -> None:
        for record in reversed(records):  # children and referrers before the tagged manifest
            await client.put_manifest(task.repo, record)
        await client.replicate_tag(task.repo, task.tag, task.digest, source=self._source)

    async def _on_build_index(self, remote: Remote, call: Any) -> None:
        """``call(client)`` on the remote's build-indexes in order, until one succeeds."""
        last: Exception | None = None
        for client in remote.build_indexes:
            try:
                await call(client)
                return
            except CancelledError:
                raise
            except Exception as e:
                last = e
        assert last is not None
        raise last

    async def _copy_blob(self, remote: Remote, repo: str, digest: Digest) -> None:
        """This cluster's origin -> the remote's origins, streamed (the remote checks the digest)."""
        pipes: list[BodyPipe] = []

        async def body() -> BodyPipe:
            pipe = await self._open(remote, repo, digest)
            pipes.append(pipe)
            return pipe

        try:
            await remote.origin.upload_from(repo, digest, body, rate=remote.config.rate)
        finally:
            for pipe in pipes:
                pipe.close()  # a try that never sent its body leaves no response open
        if not pipes:  # the remote had it after all
            self.stats.add(remote.name, blobs_present=1)
            return
        sent = pipes[-1].sent
        self.stats.add(remote.name, blobs_sent=1, bytes_sent=sent)
        self.log.info(
            "blob {digest} of {namespace} sent to {remote} ({bytes} bytes)",
            digest=str(digest), namespace=repo, remote=remote.name, bytes=sent,
        )  # fmt: skip

    async def _open(self, remote: Remote, repo: str, digest: Digest) -> BodyPipe:
        """The blob's body from this cluster's origin, as a pipe into an upload. Its failures are
        ``ReplicationError``s, so that the upload does not move on to another of the remote's origins."""
        try:
            response = await self._origin.get(repo, digest)
        except CancelledError:
            raise
        except Exception as e:
            raise ReplicationError(f"this cluster's origin failed to serve blob {digest}: {e}") from None
        if response.code != 200 or response.length is UNKNOWN_LENGTH:
            response.deliverBody(Discard())
            what = response.code if response.code != 200 else "200 without a length"
            raise ReplicationError(f"this cluster's origin answered {what} for blob {digest}")
        pipe = BodyPipe(response, remote.bucket, self._clock, self._body_timeout)
        self.log.info(
            "sending blob {digest} of {namespace} to {remote} ({bytes} bytes)",
            digest=str(digest), namespace=repo, remote=remote.name, bytes=pipe.length,
        )  # fmt: skip
        return pipe
