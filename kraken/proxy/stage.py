"""Streaming a client's upload to an origin while it arrives (``uploads.stream_to_origin``, on by default).

Without it a push crosses two hops one after the other: the client's body into the proxy's upload area, then,
at the PUT that names the digest, the whole file from the proxy to the blob's origin. Which origin stores a blob
is decided by its digest, known only at that PUT; so the proxy opens a *staged upload* on one origin (a ring
member at random: ``ClusterClient.any_member``; ``POST /namespace/<ns>/staged-uploads``), streams every large
body of the upload to it as it arrives (the bodies the site spools: ``kraken.net.server.SPOOL_MIN`` and up, or
of unknown length), beside writing it to its own upload area, and at the PUT asks that origin to store it under
the digest (``PUT /namespace/<ns>/blobs/<digest>/staged-uploads/<uid>``). The origin has hashed the bytes as they came,
checks the digest, and copies the blob to the other replicas, as for any upload; the two hops overlap.

The proxy's own file stays the reference: the PUT uploads it as before (``ProxySource.commit_blob``) whenever
the stage cannot be used, which is when

- the stage broke: its origin could not be reached or refused a chunk (507: full), answered with another size
  than was sent, held the client back (``HIGH_WATER`` bytes waiting for it) for ``stall`` seconds, or had not
  taken the whole body ``stall`` seconds after the PUT came;
- the sizes disagree: a body reached the stage that the registry did not append (a refused or repeated chunk),
  or the upload has a chunk that did not go through the stage (a small one);
- the staging origin is not in the blob's placement (421): in a ring with more members than replicas, that is
  true of most blobs (``replicas / members`` of them go through the stage);
- the origin refused the digest: the file is uploaded to decide (a stale chunk may have reached the stage).

A stage the PUT does not use is deleted on its origin (best effort) once the proxy's upload is gone
(``UploadArea.on_gone``: stored, cancelled, expired); what is left of one (the proxy stopped) goes with the
origin's ``upload_ttl``. A PUT whose client goes away while the stage is still sending stops there, uploading
nothing. Reactor thread only.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from kraken.core import Digest
from kraken.origin.client import ClusterClient, OriginClient
from kraken.registry.names import is_valid_name
from kraken.store.spool import BodySpool
from kraken.store.uploads import UploadArea

#: Bytes waiting for the origin above which the client is paused, and below which it is let go again.
HIGH_WATER = 8 << 20
LOW_WATER = 2 << 20
#: Seconds the client may be held back for the origin before the stage is given up.
STALL = 10.0

_UPLOAD = re.compile(rb"/v2/(.+)/blobs/uploads/([^/]+)\Z")
_HOLD = "origin"
CANCELLED = "cancelled"
log = Logger()


class Stager:
    """The stages of the uploads in progress, by upload id. ``tee`` is ``UploadArea.tee``, ``drop`` its
    ``on_gone``."""

    def __init__(
        self, origin: ClusterClient, uploads: UploadArea, *, clock: IReactorTime, stall: float = STALL
    ) -> None:
        self._origin = origin
        self._uploads = uploads
        self._clock = clock
        self._stall = stall
        self._stages: dict[str, Stage] = {}
        #: Blobs stored through their stage, and those uploaded again after all (``ProxySource.commit_blob``).
        self.streamed = 0
        self.fallbacks = 0

    def __len__(self) -> int:
        return len(self._stages)

    def tee(self, method: bytes, path: bytes, spool: BodySpool) -> None:
        """Stream ``spool``'s body to the stage of its upload, if it is a chunk of one (PATCH, or a PUT with a
        body) and the stage has every earlier byte of it."""
        if method not in (b"PATCH", b"PUT"):
            return
        m = _UPLOAD.match(path.split(b"?", 1)[0])
        if m is None:
            return
        name, uid = m.group(1).decode("latin-1"), m.group(2).decode("latin-1")
        size = self._uploads.live_size(uid)
        if size is None or not is_valid_name(name):
            return
        stage = self._stages.get(uid)
        if stage is None:
            if size != 0:
                return  # begun with a chunk the site did not spool: the PUT uploads the file
            stage = self._stages[uid] = Stage(self._origin, name, clock=self._clock, stall=self._stall)
        elif stage.broken:
            return
        elif stage.busy or stage.teed != size or stage.namespace != name:
            stage.give_up(f"a chunk at {size} bytes, but the stage holds {stage.teed}")
            return
        spool.tee(stage.chunk(spool))

    async def commit(self, uid: str, namespace: str, digest: Digest, size: int) -> bool:
        """Store upload ``uid`` as ``digest`` through its stage: True if done; False to upload the file."""
        stage = self._stages.pop(uid, None)
        if stage is None:
            return False
        if stage.namespace != namespace:
            stage.discard()
            self.fallbacks += 1
            return False
        done = await stage.commit(digest, size)
        if done:
            self.streamed += 1
        else:
            self.fallbacks += 1
        return done

    def drop(self, uid: str) -> None:
        """Upload ``uid`` is gone (completed, cancelled, expired): delete its stage, if it still has one."""
        stage = self._stages.pop(uid, None)
        if stage is not None:
            stage.discard()


class StagerCollector(Collector):
    """``kraken_proxy_upload_streams_total{outcome}`` (``stored``: the origin stored the stream at the PUT;
    ``resent``: the PUT sent the proxy's copy instead) and ``kraken_proxy_upload_streams_open``."""

    def __init__(self, stager: Stager) -> None:
        self._stager = stager

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        done, open_now = self._families()
        done.add_metric(["stored"], self._stager.streamed)
        done.add_metric(["resent"], self._stager.fallbacks)
        open_now.add_metric([], len(self._stager))
        yield from (done, open_now)

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily(
                "kraken_proxy_upload_streams",
                "Uploads streamed to an origin as they arrived, by what their PUT did: stored, or resent the copy.",
                labels=("outcome",),
            ),
            GaugeMetricFamily("kraken_proxy_upload_streams_open", "Uploads streaming to an origin now."),
        )


class Stage:
    """One upload's staged copy on one origin: its chunks are sent there one after the other."""

    def __init__(self, cluster: ClusterClient, namespace: str, *, clock: IReactorTime, stall: float = STALL) -> None:
        self.namespace = namespace
        #: The origin (a member of the ring, picked at random once the first body arrives).
        self.base = ""
        self._cluster = cluster
        self._client: OriginClient | None = None
        self._clock = clock
        self._stall = stall
        #: Bytes of every body given to the stage so far.
        self.teed = 0
        #: Why the stage cannot be used (None: it can).
        self.broken: str | None = None
        self._uid: str | None = None
        self._tail: Deferred[None] = succeed(None)  # the last chunk's sending; never fails
        self._active: _Chunk | None = None  # the chunk whose body is arriving
        self._request: Deferred[Any] | None = None

    @property
    def busy(self) -> bool:
        """A body is still arriving."""
        return self._active is not None and not self._active.ended

    def chunk(self, spool: BodySpool) -> _Chunk:
        """The tee of a new body, sent once every earlier one is."""
        chunk = self._active = _Chunk(self, spool, self._clock, self._stall)
        offset, previous = self.teed, self._tail
        self._tail = Deferred.fromCoroutine(self._send(previous, chunk, offset))
        return chunk

    async def _send(self, previous: Deferred[None], chunk: _Chunk, offset: int) -> None:
        await previous
        if self.broken is not None:
            chunk.kill()
            return
        try:
            if self._client is None:
                self._request = Deferred.fromCoroutine(self._cluster.any_member())
                self.base = await self._request
                self._client = self._cluster.client(self.base)
            if self._uid is None:
                self._request = Deferred.fromCoroutine(self._client.start_staged(self.namespace))
                self._uid = await self._request
            self._request = Deferred.fromCoroutine(self._client.append_staged(self.namespace, self._uid, offset, chunk))
            size = await self._request
        except CancelledError:
            self.give_up(CANCELLED)
            return
        except Exception as e:
            self.give_up(f"{self.base}: {e}")
            return
        finally:
            self._request = None
        if size != offset + chunk.sent:
            self.give_up(f"{self.base} holds {size} bytes, {offset + chunk.sent} were sent")

    def give_up(self, why: str) -> None:
        """The stage cannot be used: stop sending (the client goes on), say why once."""
        if self.broken is not None:
            return
        self.broken = why
        log.info("streaming an upload to {origin} stopped: {why}", origin=self.base, why=why, namespace=self.namespace)
        if self._active is not None:
            self._active.kill()
        if self._request is not None:
            self._request.cancel()

    async def commit(self, digest: Digest, size: int) -> bool:
        """Once every chunk is sent (within ``stall`` seconds): store the stage as ``digest`` on its origin
        (True), or delete it (False)."""
        if not self._tail.called:
            late = self._clock.callLater(self._stall, self.give_up, f"the origin took more than {self._stall:.0f}s")
            try:
                await self._tail
            finally:
                if late.active():
                    late.cancel()
            if self.broken == CANCELLED:
                raise CancelledError()  # the PUT's client went away while the stage was still sending
        if self.broken is not None or self._uid is None or self._client is None or self.teed != size:
            if self.broken is None:
                log.info(
                    "the upload of {digest} holds {bytes} bytes, its stage {staged}: uploading the file",
                    digest=str(digest),
                    bytes=size,
                    staged=self.teed,
                )
            self.discard()
            return False
        try:
            done = await self._client.commit_staged(self.namespace, digest, self._uid, size)
        except CancelledError:
            self.discard()
            raise
        except Exception as e:  # the origin failed, or refused the digest (the file gives the verdict)
            log.warn(
                "storing the stage of {digest} on {origin} failed ({error}): uploading the file",
                digest=str(digest),
                origin=self.base,
                error=str(e),
            )
            self.discard()
            return False
        if not done:
            log.debug(
                "{origin} is not in the placement of {digest}: uploading the file", origin=self.base, digest=str(digest)
            )
        return done

    def discard(self) -> None:
        """Delete the stage on its origin, best effort (the origin's upload TTL does it otherwise)."""
        self.give_up("discarded")
        uid, self._uid = self._uid, None
        if uid is None or self._client is None:
            return
        d = Deferred.fromCoroutine(self._client.drop_staged(self.namespace, uid))
        d.addErrback(
            lambda f: log.debug(
                "deleting stage {uid} on {origin} failed: {error}", uid=uid, origin=self.base, error=f.getErrorMessage()
            )
        )


@implementer(IBodyProducer)
class _Chunk:
    """One request body on its way to the stage: the spool's tee on one side (``write``, ``end``, ``abort``),
    the body of the origin's PATCH on the other (``IBodyProducer``), with what the origin has not taken yet in
    between; the client is held back while that is over ``HIGH_WATER`` bytes, for at most ``stall`` seconds."""

    length = UNKNOWN_LENGTH

    def __init__(self, stage: Stage, spool: BodySpool, clock: IReactorTime, stall: float) -> None:
        self._stage = stage
        self._spool = spool
        self._clock = clock
        self._stall = stall
        self._waiting: deque[bytes] = deque()
        self._waiting_bytes = 0
        self._consumer: IConsumer | None = None
        self._paused = False
        self._done: Deferred[None] | None = None
        self._timer: IDelayedCall | None = None
        self._dead = False
        self.ended = False
        #: Bytes of the body given to the stage.
        self.sent = 0

    # -- the spool's side (BodyTee) --

    def write(self, data: bytes) -> None:
        if self._dead:
            return
        self.sent += len(data)
        self._stage.teed += len(data)
        if self._consumer is not None and not self._paused and not self._waiting:
            self._consumer.write(data)
            return
        self._waiting.append(data)
        self._waiting_bytes += len(data)
        if self._waiting_bytes > HIGH_WATER:
            self._hold()

    def end(self) -> None:
        self.ended = True
        self._finish_if_sent()

    def abort(self, why: str) -> None:
        self.ended = True
        self._stage.give_up(why)

    # -- the origin's side (IBodyProducer) --

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        self._done = Deferred()
        self._flush()
        return self._done

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()

    def stopProducing(self) -> None:
        # The PATCH ended before its body: the origin answered early, or the stage gave up.
        self.kill()

    # --

    def kill(self) -> None:
        """Send nothing more; let the client go."""
        self._dead = True
        self._waiting.clear()
        self._waiting_bytes = 0
        self._release()

    def _flush(self) -> None:
        while self._waiting and not self._paused and not self._dead and self._consumer is not None:
            data = self._waiting.popleft()
            self._waiting_bytes -= len(data)
            self._consumer.write(data)
        if self._waiting_bytes < LOW_WATER:
            self._release()
        self._finish_if_sent()

    def _finish_if_sent(self) -> None:
        if self.ended and not self._waiting and not self._dead and self._done is not None and not self._done.called:
            self._done.callback(None)

    def _hold(self) -> None:
        if self._timer is None:
            self._spool.hold(_HOLD)
            self._timer = self._clock.callLater(self._stall, self._stalled)

    def _release(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
            self._spool.release(_HOLD)

    def _stalled(self) -> None:
        self._timer = None
        self._spool.release(_HOLD)
        self._stage.give_up(f"the origin took nothing for {self._stall:.0f}s")
