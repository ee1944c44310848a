"""Background repair of the origin ring: every blob back on its replicas, with no client asking.

``RingRepair`` is a Service. A **walk** lists the blobs of this origin's store
(in the I/O worker, never on the reactor), and for each ``MAX_STAT_BATCH`` of
them:

1. computes each blob's placement (``Ring.placement``: its first
   ``replicas`` owners among the current members);
2. asks every other healthy member of those placements, with one
   ``POST /blobs/stat`` each (answered from its store alone), which of the
   blobs it holds;
3. plans the copies (``plan``, pure): a member of the placement that answered
   and lacks the blob gets it from the **first holder in placement order** (a
   member that did not answer counts as neither holder nor target), so that
   two holders never both send it; a blob that no member of its placement
   holds is sent by the origin holding it outside its placement;
4. sends them, at most ``concurrency`` at once and ``rate`` bytes per second
   in all (a token bucket on the clock), each as an ordinary replica copy
   (``OriginClient.upload(replica=k)``, k its place in the placement; a member
   that got it meanwhile answers 409, which counts as success).

Pushing from a holder, rather than pulling into the member that lacks a
blob, needs no list of what the others hold: each origin looks only at its
own store, and a new empty member is filled by the others.

Write-back: a blob waiting here for write-back is copied under each of its
namespaces, and the receiver queues it too (as any replica copy, delayed). A
blob with no write-back pending here was written back already or has no
backend: it goes under the namespace ``kraken-repair`` with the
``Kraken-Repair`` header, and the receiver queues nothing.

Blobs held here that the ring places elsewhere only are **kept** (counted as
``outside``): once the placement holds them they are merely an extra copy,
which the cache cleanup evicts when idle if a backend holds them; repair never
deletes, so it can never drop the last copy.

When: every ``interval`` seconds after the last walk ended, after every change
of the members (``kick``), and when a member marked unhealthy for at least
``grace`` seconds is healthy again (``health_changed``: it may be a new, empty
disk at the old address). A member back sooner is not walked for (a flapping
member is not flooded: what it missed comes at the next walk, or on a miss).
Walks never overlap: a kick during a walk runs one more walk after it.

Progress goes to the log at most every ``progress`` seconds ("repair: 37/100
copies, 592 MiB, ...") and a summary after each walk that had anything to do;
the counters are ``stats()`` (the ``repair`` section of the origin's
``/stats``).
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from kraken.core import Digest
from kraken.core.digest import DigestError
from kraken.net.bounded import bounded_map, chunks
from kraken.origin.batch import MAX_STAT_BATCH
from kraken.origin.config import RepairConfig
from kraken.origin.single import StatAnswer
from kraken.store import CAStore
from kraken.throttle import TokenBucket, Unlimited
from kraken.workers import Worker

#: The namespace of a repair copy whose write-back is nobody's job (sent with ``Kraken-Repair``).
REPAIR_NAMESPACE = "kraken-repair"
MIB = 1024 * 1024


class Member(Protocol):
    """What repair asks of another origin (``kraken.origin.client.OriginClient``)."""

    async def stat_batch(self, digests: Sequence[Digest]) -> StatAnswer: ...

    async def upload(
        self, namespace: str, digest: Digest, path: str, size: int, *, replica: int = 0, repair: bool = False
    ) -> None: ...


@attrs.frozen
class RingView:
    """What repair sees of the cluster: this origin (``me``, "host:port"), a blob's ``placement``, a member's
    health (``healthy``), another origin's client (``client_for``), and the namespaces a blob waits for
    write-back to here (``namespaces``; empty: none, or no backends)."""

    me: str
    placement: Callable[[Digest], list[str]]
    healthy: Callable[[str], bool]
    client_for: Callable[[str], Member]
    namespaces: Callable[[Digest], list[str]] = lambda digest: []


@attrs.frozen
class Copy:
    """One copy to send: ``digest`` (``size`` bytes) to ``member``, as its ``replica`` k."""

    digest: Digest
    size: int
    member: str
    replica: int


def plan(
    digest: Digest, size: int, *, me: str, placement: Sequence[str], held: Mapping[str, bool | None]
) -> list[Copy]:
    """The copies this origin (``me``, which holds the blob) sends. ``held[m]``: whether member ``m`` of the
    placement said it holds it (None or absent: not asked, or no answer). See the module docstring."""
    holders = [m for m in placement if m == me or held.get(m) is True]
    if me in placement:
        if holders[0] != me:
            return []  # an earlier holder in placement order sends it
    elif holders:
        return []  # the placement holds it: this extra copy has nothing to do
    return [Copy(digest, size, m, k) for k, m in enumerate(placement, start=1) if m != me and held.get(m) is False]


def list_blobs(root: str) -> list[Digest]:
    """The digests of the blobs committed under the store ``root`` (``cache/ab/cd/<hex>/data``, and
    ``cache/sha512/ab/cd/<hex>/data``). Blocking."""
    found = []
    sha256 = glob.iglob(os.path.join(root, "cache", "*", "*", "*", "data"))
    sha512 = glob.iglob(os.path.join(root, "cache", "sha512", "*", "*", "*", "data"))
    for path in itertools.chain(sha256, sha512):
        try:
            found.append(Digest(os.path.basename(os.path.dirname(path))))
        except DigestError:
            continue  # not ours
    return sorted(found, key=str)


@attrs.define
class RepairStats:
    """Counters since the origin started (``running``, ``planned``, ``done``: the walk under way)."""

    walks: int = 0  # walks finished
    running: bool = False
    checked: int = 0  # blobs looked at, all walks
    copies: int = 0  # copies sent (or found held meanwhile)
    copied_bytes: int = 0
    failures: int = 0  # copies, or questions to a member, that failed
    outside: int = 0  # blobs held here outside their placement, at the last walk (kept)
    planned: int = 0  # copies planned by the walk under way
    done: int = 0  # of them, sent or failed


class RingRepair(Service):
    """See the module docstring. ``ring`` is the cluster as repair sees it;
    ``root`` is the store's directory (``store.root``)."""

    log = Logger()

    def __init__(
        self,
        config: RepairConfig,
        ring: RingView,
        *,
        store: CAStore,
        root: str,
        worker: Worker,
        clock: IReactorTime,
    ) -> None:
        self.setName("repair")
        self._config = config
        self._ring = ring
        self._me = ring.me
        self._store, self._root, self._worker, self._clock = store, root, worker, clock
        self._stats = RepairStats()
        self._timer: IDelayedCall | None = None
        self._walking: Deferred[None] | None = None
        self._again = False
        self._down_since: dict[str, float] = {}
        self._last_progress = 0.0
        self._before = RepairStats()  # the counters when the walk under way started
        self._bucket: TokenBucket | Unlimited = Unlimited()

    def stats(self) -> RepairStats:
        return attrs.evolve(self._stats)

    # -- when --

    def startService(self) -> None:
        super().startService()
        rate = self._config.rate
        self._bucket = TokenBucket(rate, max(rate, MIB), clock=self._clock) if rate > 0 else Unlimited()
        self._schedule()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._bucket.close()
        walking, self._walking = self._walking, None
        if walking is not None:
            walking.cancel()
        return None

    def _schedule(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._clock.callLater(self._config.interval, self.kick, "periodic walk")

    def kick(self, reason: str) -> None:
        """Walk now (after the walk under way, if any)."""
        if not self.running:
            return
        if self._walking is not None:
            self._again = True
            return
        self.log.info("repair: walking the store ({reason})", reason=reason)
        walking = Deferred.fromCoroutine(self._walks())
        if not walking.called:
            self._walking = walking

    def members_changed(self, members: object) -> None:
        self.kick("the cluster's members changed")

    def health_changed(self, member: str, healthy: bool) -> None:
        """The health filter's listener: a member back after ``grace`` seconds or more is walked for."""
        now = self._clock.seconds()
        if not healthy:
            self._down_since.setdefault(member, now)
            return
        since = self._down_since.pop(member, None)
        if since is None:
            return
        down = now - since
        if down >= self._config.grace:
            self.kick(f"{member} is back after {down:.0f}s")
        else:
            self.log.info(
                "repair: {member} is back after {down:.0f}s, within the grace of {grace:.0f}s: not walking now",
                member=member,
                down=down,
                grace=self._config.grace,
            )

    async def _walks(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    await self.walk()
                except CancelledError:
                    return
                except Exception:
                    self.log.failure("repair: walk failed")
                if not self._again or not self.running:
                    return
        finally:
            self._walking = None
            self._stats.running = False
            if self.running:
                self._schedule()

    # -- one walk --

    async def walk(self) -> None:
        """Walk the store once (see the module docstring)."""
        started = self._clock.seconds()
        self._last_progress = started
        before = self._before = attrs.evolve(self._stats)
        self._stats.running, self._stats.planned, self._stats.done, self._stats.outside = True, 0, 0, 0
        digests = await self._worker.run(list_blobs, self._root)
        for chunk in chunks(digests, MAX_STAT_BATCH):
            copies = await self._plan_chunk(chunk)
            self._stats.planned += len(copies)
            await bounded_map(copies, self._config.concurrency, self._send)
        self._stats.walks += 1
        self._stats.running = False
        sent, failures = self._stats.copies - before.copies, self._stats.failures - before.failures
        self.log.info(
            "repair: walk done in {seconds:.1f}s: {checked} blobs, {copies} copies sent ({mib:.0f} MiB),"
            " {failures} failed, {outside} held outside their placement (kept)",
            seconds=self._clock.seconds() - started,
            checked=len(digests),
            copies=sent,
            mib=(self._stats.copied_bytes - before.copied_bytes) / MIB,
            failures=failures,
            outside=self._stats.outside,
        )

    async def _plan_chunk(self, chunk: list[Digest]) -> list[Copy]:
        sizes = await self._store.stat_many(chunk)  # a blob evicted since the listing is skipped
        placements = {d: self._ring.placement(d) for d in sizes}
        asks: dict[str, list[Digest]] = {}
        for digest, members in placements.items():
            if self._me not in members:
                self._stats.outside += 1
            for m in members:
                if m != self._me and self._ring.healthy(m):
                    asks.setdefault(m, []).append(digest)
        groups = list(asks.items())
        answers = await bounded_map(groups, self._config.concurrency, self._ask)
        told = {m: answer for (m, _), answer in zip(groups, answers, strict=True)}
        copies = []
        for digest, members in placements.items():
            held = {m: _holds(told.get(m), digest) for m in members if m != self._me}
            copies.extend(plan(digest, sizes[digest], me=self._me, placement=members, held=held))
        self._stats.checked += len(sizes)
        return copies

    async def _ask(self, group: tuple[str, list[Digest]]) -> set[Digest] | None:
        member, digests = group
        try:
            answer = await self._ring.client_for(member).stat_batch(digests)
        except CancelledError:
            raise
        except Exception as e:
            self._failed(e, "asking {member} about {count} blobs", member=member, count=len(digests))
            return None
        return set(answer.held)

    def _failed(self, error: Exception, what: str, **fields: object) -> None:
        self._stats.failures += 1
        self.log.warn(f"repair: {what} failed: {{error}}", error=str(error) or type(error).__name__, **fields)

    async def _send(self, copy: Copy) -> None:
        try:
            await self._bucket.reserve(copy.size)
            await self._upload(copy)
        except CancelledError:
            raise
        except Exception as e:
            self._failed(e, "copying {digest} to {member}", digest=str(copy.digest), member=copy.member)
        else:
            self._stats.copies += 1
            self._stats.copied_bytes += copy.size
            self.log.debug("repair: copied {digest} to {member}", digest=str(copy.digest), member=copy.member)
        self._stats.done += 1
        self._progress()

    async def _upload(self, copy: Copy) -> None:
        client = self._ring.client_for(copy.member)
        path = self._store.blob_path(copy.digest)
        namespaces = self._ring.namespaces(copy.digest)
        for namespace in namespaces:
            await client.upload(namespace, copy.digest, path, copy.size, replica=copy.replica)
        if not namespaces:
            await client.upload(REPAIR_NAMESPACE, copy.digest, path, copy.size, replica=copy.replica, repair=True)

    def _progress(self) -> None:
        now = self._clock.seconds()
        if now - self._last_progress < self._config.progress:
            return
        self._last_progress = now
        self.log.info(
            "repair: {done}/{planned} copies, {mib:.0f} MiB sent, {failures} failed, {checked} blobs checked",
            done=self._stats.done,
            planned=self._stats.planned,
            mib=(self._stats.copied_bytes - self._before.copied_bytes) / MIB,
            failures=self._stats.failures - self._before.failures,
            checked=self._stats.checked - self._before.checked,
        )


def _holds(answer: set[Digest] | None, digest: Digest) -> bool | None:
    return None if answer is None else digest in answer
