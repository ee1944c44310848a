"""The peer store in Redis: several trackers share who has which blob.

Layout (every key starts with ``key_prefix``, default ``kraken:tracker:``):

- ``<prefix>exp:<info hash>``: a sorted set of the blob's peer ids, each
  scored by the time its entry expires (the announce's time + ``peer_ttl``);
- ``<prefix>peers:<info hash>``: a hash of peer id -> ``{"p": peer JSON,
  "s": announcing address}``;
- both keys get an ``EXPIRE`` of ``peer_ttl`` on every write, so a blob
  nobody announces any more leaves Redis by itself.

An announce is one Redis round trip (``WRITE``, a Lua script: ``ZADD GT
CH``, ``HSET`` when the entry is newer, trim to ``max_peers_per_blob``,
``EXPIRE``), sent without waiting for the answer; reading a blob's peers
back is one more (``READ``: drop the expired, ``ZRANGEBYSCORE`` of the live
ones, ``HMGET``), at most once per ``sync_interval`` per blob. Answers are
always computed from a local copy (a ``MemoryPeerStore``: the same fair
choice, caps and unreachable reports as the memory store): peers read from
Redis are merged into it, this tracker's own announces are recorded in it
as they arrive. Reports of unreachable peers stay per tracker.

Every ``check_interval`` the tracker asks Redis for its run id (``INFO
server``). While Redis is unreachable (a call failed or took longer than
``timeout``) the tracker answers from that local copy: the peers announced
to it, and those it had read back, until they expire; the origins never
come from Redis anyway. It logs ``redis unreachable`` once and touches
Redis only for that check, not per announce. When the check succeeds again,
or finds another run id (Redis restarted empty between two checks, or
Sentinel failed over to a replica), the tracker writes its whole local copy
back (so seeders, which announce only once, survive a Redis restart) and
logs ``redis back`` (or ``redis restarted or failed over``) once. Times
are the trackers' clocks: trackers sharing a Redis need clocks in step (NTP).
Needs Redis >= 6.2 (``ZADD GT``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kraken.core.peer import PeerInfo
from kraken.tracker.config import TrackerConfig
from kraken.tracker.peers import IPeerStore, MemoryPeerStore
from kraken.tracker.progress import Progress
from kraken.tracker.store_config import RedisConfig, host_port
from kraken.tracker.unreachable import UnreachablePolicy

# KEYS: peers hash, expiry set. ARGV: key ttl (s), max peers, then (peer id, expiry, entry JSON) per peer.
WRITE = """
for i = 3, #ARGV, 3 do
  if redis.call('ZADD', KEYS[2], 'GT', 'CH', ARGV[i + 1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
  end
end
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[2])
if extra > 0 then
  local gone = redis.call('ZPOPMIN', KEYS[2], extra)
  for i = 1, #gone, 2 do redis.call('HDEL', KEYS[1], gone[i]) end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"""

# KEYS: peers hash, expiry set. ARGV: now, max peers. Returns entry JSON, expiry, ... oldest first.
READ = """
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for i = 1, #old do redis.call('HDEL', KEYS[1], old[i]) end
if #old > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1]) end
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, ARGV[2])
local out = {}
for i = 1, #live, 2 do
  local entry = redis.call('HGET', KEYS[1], live[i])
  if entry then
    out[#out + 1] = entry
    out[#out + 1] = live[i + 1]
  end
end
return out
"""

#: The longest pause between attempts to reconnect to Redis (or to a Sentinel).
RECONNECT_MAX_DELAY = 2.0
#: Blobs whose last read is remembered (beyond it, all are read again at their next announce).
MAX_SYNCED = 200_000
#: Blobs written back per batch when Redis is back (each blob is one round trip, a batch runs concurrently).
REPUBLISH_BATCH = 100


class Redis(Protocol):
    """What the store needs of a Redis connection (txredisapi's handler has it; see ``connect``)."""

    def eval(self, script: str, keys: list[str], args: list[Any]) -> Deferred[Any]: ...

    def run_id(self) -> Deferred[str]:
        """The server's ``run_id`` (``INFO server``): another one after a restart or a failover."""

    def disconnect(self) -> Deferred[Any]: ...


class LocalCopy(MemoryPeerStore):
    """The memory store, plus what the Redis store needs: merging entries read back, and writing all back."""

    def last_seen(self, info_hash: str, peer_id: str) -> float | None:
        swarm = self._blobs.get(info_hash)
        entry = swarm.entries.get(peer_id) if swarm is not None else None
        return None if entry is None else entry.seen

    def merge(self, info_hash: str, entries: Sequence[tuple[PeerInfo, float, str]]) -> None:
        """Record ``entries`` (peer, seen, source) that are newer than what is held, keeping every
        list of entries ordered by when they were seen (expiry and eviction rely on it)."""
        out_of_order = False
        for peer, seen, source in entries:
            swarm = self._blobs.get(info_hash)
            newest = -math.inf
            if swarm is not None and swarm.entries:
                known = swarm.entries.get(peer.peer_id)
                if known is not None and known.seen >= seen:
                    continue
                newest = next(reversed(swarm.entries.values())).seen
            self.record(info_hash, peer, seen, source)
            out_of_order = out_of_order or seen < newest
        swarm = self._blobs.get(info_hash)
        if out_of_order and swarm is not None:
            for entry in sorted(swarm.entries.values(), key=lambda e: e.seen):
                swarm.entries.move_to_end(entry.peer.peer_id)
                entry.group.entries.move_to_end(entry.peer.peer_id)

    def blobs(self) -> Iterator[tuple[str, list[tuple[PeerInfo, float, str]]]]:
        """(info hash, [(peer, seen, source), ...]) of every blob held."""
        for info_hash, swarm in list(self._blobs.items()):
            yield info_hash, [(e.peer, e.seen, e.group.key) for e in swarm.entries.values()]


@implementer(IPeerStore)
class RedisPeerStore(MultiService):
    """``IPeerStore`` shared through Redis, answering from ``local`` (see the module's docstring)."""

    log = Logger()

    def __init__(
        self,
        connect: Callable[[], Redis],
        local: LocalCopy,
        *,
        clock: IReactorTime,
        ttl: float,
        max_peers: int,
        options: RedisConfig,
    ) -> None:
        super().__init__()
        self.setName("peer-store")
        local.setServiceParent(self)
        self.local = local
        self._connect = connect
        self._redis: Redis = _NotConnected()
        self._clock = clock
        self._ttl = ttl
        self._key_ttl = max(1, math.ceil(ttl))
        self._max_peers = max_peers
        self._prefix = options.key_prefix
        self._timeout = options.timeout
        self._sync_interval = options.sync_interval
        self._check_interval = options.check_interval
        self._checks = LoopingCall(self._check_now)
        self._checks.clock = clock
        self._run_id: str | None = None
        self._synced: dict[str, float] = {}
        self._down_since: float | None = None
        #: How often Redis became unreachable, and entries read back from Redis that were not understood.
        self.outages = 0
        self.bad_entries = 0

    @property
    def reachable(self) -> bool:
        return self._down_since is None

    # -- IPeerStore --

    async def update(
        self, info_hash: str, peer: PeerInfo, now: float, source: str, progress: Progress | None = None
    ) -> None:
        self.local.record(info_hash, peer, now, source, progress)  # progress stays with this tracker
        if self._down_since is None:
            # A downloading peer's write is not awaited: the answer does not depend on it, and a failure marks
            # Redis down. A complete peer (a seeder, which announces rarely) is awaited, so that once its
            # announce is answered every tracker can hand it out.
            written = self._call(WRITE, info_hash, [self._key_ttl, self._max_peers, *self._row(peer, now, source)])
            if peer.complete:
                await written

    async def peers(self, info_hash: str, limit: int, now: float) -> list[PeerInfo]:
        if self._down_since is None and now - self._synced.get(info_hash, -math.inf) >= self._sync_interval:
            if len(self._synced) >= MAX_SYNCED:
                self._synced.clear()
            self._synced[info_hash] = now
            rows = await self._call(READ, info_hash, [repr(now), self._max_peers])
            if rows is not None:
                self._merge(info_hash, rows)
        return self.local.live(info_hash, limit, now)

    async def report_unreachable(self, info_hash: str, peer_ids: Sequence[str], source: str, now: float) -> None:
        self.local.report(info_hash, peer_ids, source, now)

    # -- Redis --

    def _keys(self, info_hash: str) -> list[str]:
        return [f"{self._prefix}peers:{info_hash}", f"{self._prefix}exp:{info_hash}"]

    def _row(self, peer: PeerInfo, seen: float, source: str) -> list[str]:
        entry = json.dumps({"p": peer.to_json(), "s": source}, separators=(",", ":"))
        return [peer.peer_id, repr(seen + self._ttl), entry]

    def _call(self, script: str, info_hash: str, args: list[Any]) -> Deferred[Any]:
        """The script's answer, or None once Redis is found unreachable (never an error)."""
        d = self._redis.eval(script, self._keys(info_hash), args)
        d.addTimeout(self._timeout, self._clock)
        return d.addErrback(self._unreachable)

    def _merge(self, info_hash: str, rows: Sequence[Any]) -> None:
        """Entries read back from Redis (entry JSON, expiry, ...) into the local copy."""
        entries = []
        for i in range(0, len(rows) - 1, 2):
            try:
                entry = json.loads(rows[i])
                entries.append((PeerInfo.from_json(entry["p"]), float(rows[i + 1]) - self._ttl, str(entry["s"])))
            except (ValueError, TypeError, KeyError):
                self.bad_entries += 1
        self.local.merge(info_hash, entries)

    def _unreachable(self, failure: Any) -> None:
        if self._down_since is not None or not self.running:
            return
        self._down_since = self._clock.seconds()
        self.outages += 1
        self.log.warn(
            "redis unreachable ({error}): answering from this tracker's memory (its own announces and the peers"
            " read before) until it is back; trying again every {every}s (outage {count})",
            error=_why(failure, self._timeout), every=self._check_interval, count=self.outages,
        )  # fmt: skip

    def _check_now(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._check())

    async def _check(self) -> None:
        """Is Redis there, and is it the one it was (its run id)? Back or replaced: write the local copy to it."""
        try:
            d = self._redis.run_id()
            d.addTimeout(self._timeout, self._clock)
            run_id = await d
        except Exception:
            self._unreachable(Failure())
            return
        replaced = self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        if self._down_since is None and not replaced:
            return
        try:
            written = await self._republish()
        except Exception:
            self._unreachable(Failure())
            return
        if not self.running:
            return
        since, self._down_since = self._down_since, None
        self._synced.clear()
        if since is None:
            self.log.warn(
                "redis restarted or failed over (run id {run_id}): wrote back {count} peers from this tracker's"
                " memory", run_id=run_id, count=written,
            )  # fmt: skip
        else:
            self.log.info(
                "redis back after {seconds:.1f}s: wrote back {count} peers from this tracker's memory",
                seconds=self._clock.seconds() - since, count=written,
            )  # fmt: skip

    async def _republish(self) -> int:
        """Write the whole local copy to Redis (``ZADD GT``: newer entries there win); how many peers."""
        now = self._clock.seconds()
        written = 0
        batch: list[Deferred[Any]] = []
        for info_hash, entries in self.local.blobs():
            args: list[Any] = [self._key_ttl, self._max_peers]
            for peer, seen, source in entries:
                if now - seen <= self._ttl:
                    args += self._row(peer, seen, source)
            if len(args) == 2:
                continue
            written += (len(args) - 2) // 3
            d = self._redis.eval(WRITE, self._keys(info_hash), args)
            batch.append(d.addTimeout(self._timeout, self._clock))
            if len(batch) >= REPUBLISH_BATCH:
                await _all(batch)
                batch = []
        await _all(batch)
        return written

    def startService(self) -> None:
        self._redis = self._connect()
        super().startService()
        self._checks.start(self._check_interval, now=True).addErrback(
            lambda f: self.log.failure("redis checks stopped", f)
        )

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._checks.running:
            self._checks.stop()
        await super().stopService()
        await self._redis.disconnect()


def _why(failure: Failure, timeout: float) -> str:
    if failure.check(TimeoutError, CancelledError):
        return f"no answer within {timeout}s"
    return failure.getErrorMessage() or failure.type.__name__  # type: ignore[union-attr]


async def _all(batch: list[Deferred[Any]]) -> None:
    await gatherResults(batch, consumeErrors=True)


class _NotConnected:
    """The store's Redis before it starts (the listener starts after it: nothing calls this)."""

    def eval(self, script: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        return fail(ConnectionError("the peer store has not started"))

    def run_id(self) -> Deferred[str]:
        return fail(ConnectionError("the peer store has not started"))

    def disconnect(self) -> Deferred[Any]:
        return succeed(None)


def _run_id(info: Any) -> str:
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line.split(":", 1)[1].strip()
    raise ValueError("INFO server has no run_id")


class _Connection:
    """A txredisapi connection (direct or through Sentinel) as the store's ``Redis``."""

    def __init__(self, handler: Any, sentinel: Any = None) -> None:
        self._handler = handler
        self._sentinel = sentinel

    def eval(self, script: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        return self._handler.eval(script, keys, args)

    def run_id(self) -> Deferred[str]:
        return self._handler.execute_command("INFO", "server").addCallback(_run_id)

    async def _disconnect(self) -> None:
        await self._handler.disconnect()
        if self._sentinel is not None:
            await self._sentinel.disconnect()

    def disconnect(self) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._disconnect())


def connect(config: RedisConfig) -> Redis:
    """A lazy connection to the Redis of ``config`` (it connects, and reconnects, in the background).

    txredisapi imports the global reactor, so it is imported here, when a
    tracker with ``peer_store.kind: redis`` is composed, not with this module.
    """
    import txredisapi

    password = None
    if config.password_file is not None:
        with open(config.password_file, encoding="utf-8") as f:
            password = f.read().strip() or None
    options = {"dbid": config.db, "password": password, "replyTimeout": config.timeout, "convertNumbers": False}
    if config.sentinel is not None:
        addresses = [host_port(a) for a in config.sentinel.addresses]
        sentinel = txredisapi.Sentinel(addresses, connectTimeout=config.timeout, replyTimeout=config.timeout)
        # Ask the Sentinels no longer than a Redis call may take (txredisapi waits 10 s for a primary).
        sentinel.discovery_timeout = config.timeout
        for each in sentinel.sentinels:
            _reconnect_within(each, RECONNECT_MAX_DELAY)
        handler = sentinel.master_for(config.sentinel.master_name, **options)
        return _Connection(_reconnect_within(handler, RECONNECT_MAX_DELAY), sentinel)
    assert config.address is not None
    host, port = host_port(config.address)
    handler = txredisapi.lazyConnection(host, port, connectTimeout=config.timeout, **options)
    return _Connection(_reconnect_within(handler, RECONNECT_MAX_DELAY))


def _reconnect_within(handler: Any, seconds: float) -> Any:
    """Cap txredisapi's reconnection backoff (10 s by default) so a returning Redis is used within ``seconds``."""
    handler._factory.maxDelay = seconds
    return handler


def peer_store(config: TrackerConfig, clock: IReactorTime) -> MemoryPeerStore | RedisPeerStore:
    """The peer store ``config.peer_store`` names: in memory (the default) or shared in Redis."""
    args = (config.peer_ttl, clock)
    kwargs: dict[str, Any] = {
        "max_peers": config.max_peers_per_blob,
        "max_per_source": config.max_peers_per_source,
        "max_blobs": config.max_blobs,
        "policy": UnreachablePolicy(config.unreachable_hold, config.unreachable_quorum),
    }
    redis = config.peer_store.redis
    if config.peer_store.kind == "memory" or redis is None:
        return MemoryPeerStore(*args, **kwargs)
    local = LocalCopy(*args, **kwargs)
    ttl, max_peers = config.peer_ttl, config.max_peers_per_blob
    return RedisPeerStore(lambda: connect(redis), local, clock=clock, ttl=ttl, max_peers=max_peers, options=redis)
