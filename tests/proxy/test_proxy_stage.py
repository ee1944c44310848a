"""kraken.proxy.stage: an upload streamed to an origin while it arrives, and every case where the PUT uploads
the proxy's own file instead. The origin is a fake that takes the chunk producers as the HTTP client would; the
spools and the upload area are real (an inline worker), time is a Clock."""

from __future__ import annotations

import hashlib
from typing import Any

from results import outcome_of
from results import result_of as result
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import Clock
from zope.interface import implementer

from kraken.core import Digest
from kraken.origin.client import DigestRefused
from kraken.proxy.stage import HIGH_WATER, Stager
from kraken.store import UploadArea
from kraken.workers import InlineWorker

NS = "team/app"


@implementer(IConsumer)
class Consumer:
    """The PATCH's side of a chunk: what the HTTP client's transport would take, pausable."""

    def __init__(self, into: bytearray) -> None:
        self.into = into
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.into += data


class FakeOrigin:
    """An origin's staged uploads: ``held`` pauses every PATCH body at once (a stalled origin)."""

    def __init__(self) -> None:
        self.staged: dict[str, bytearray] = {}
        self.stored: dict[str, bytes] = {}
        self.dropped: list[str] = []
        self.mine = True
        self.held = False
        self.fail_patch: Exception | None = None
        self.patches: list[tuple[str, int]] = []

    async def any_member(self) -> str:
        return "http://member-2:15002"

    def client(self, base: str) -> FakeOrigin:
        assert base == "http://member-2:15002"
        return self

    async def start_staged(self, namespace: str) -> str:
        uid = f"stage-{len(self.staged)}"
        self.staged[uid] = bytearray()
        return uid

    async def append_staged(self, namespace: str, uid: str, offset: int, body: Any) -> int:
        self.patches.append((uid, offset))
        if self.fail_patch is not None:
            raise self.fail_patch
        assert offset == len(self.staged[uid])
        consumer = Consumer(self.staged[uid])
        if self.held:
            body.pauseProducing()
        await body.startProducing(consumer)
        return len(self.staged[uid])

    async def commit_staged(self, namespace: str, digest: Digest, uid: str, size: int) -> bool:
        data = bytes(self.staged.pop(uid))
        if not self.mine:
            return False
        if Digest.parse("sha256:" + hashlib.sha256(data).hexdigest()) != digest:
            raise DigestRefused("PUT", uid, 400, b"digest mismatch")
        self.stored[str(digest)] = data
        return True

    async def drop_staged(self, namespace: str, uid: str) -> None:
        self.dropped.append(uid)


class Flow:
    def __init__(self) -> None:
        self.paused = False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False


class Setup:
    def __init__(self, tmp_path: Any) -> None:
        self.clock = Clock()
        self.origin = FakeOrigin()
        self.uploads = UploadArea(str(tmp_path), InlineWorker(), hashing=False)
        self.stager = Stager(self.origin, self.uploads, clock=self.clock, stall=10.0)  # type: ignore[arg-type]
        self.uploads.tee, self.uploads.on_gone = self.stager.tee, self.stager.drop
        self.flow = Flow()

    def start(self) -> str:
        return str(result(self.uploads.create()))

    def body(self, uid: str, method: bytes = b"PATCH", ns: str = NS) -> Any:
        path = f"/v2/{ns}/blobs/uploads/{uid}?x=1".encode()
        return self.uploads.spool(pause=self.flow.pause, resume=self.flow.resume, line=(method, path))

    def send(self, uid: str, *chunks: bytes, append: bool = True) -> None:
        """One request body of ``chunks``, then (``append``) the registry appending it, as a PATCH does."""
        spool = self.body(uid)
        for c in chunks:
            spool.write(c)
        result(spool.done_receiving())
        if append:
            result(self.uploads.append(uid, spool))
        spool.close()

    def commit(self, uid: str, data: bytes, ns: str = NS) -> bool:
        digest = Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())
        return bool(result(Deferred.fromCoroutine(self.stager.commit(uid, ns, digest, len(data)))))


def test_the_bodies_of_an_upload_reach_the_origin_as_they_arrive_and_its_put_stores_them_there(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    uid = s.start()
    spool = s.body(uid)
    spool.write(b"a" * 1000)
    assert bytes(s.origin.staged["stage-0"]) == b"a" * 1000  # before the body has all arrived
    spool.write(b"b" * 1000)
    result(spool.done_receiving())
    result(s.uploads.append(uid, spool))
    s.send(uid, b"c" * 500)  # a second chunk goes on from where the first ended
    assert s.origin.patches == [("stage-0", 0), ("stage-0", 2000)]
    data = b"a" * 1000 + b"b" * 1000 + b"c" * 500
    assert s.commit(uid, data)
    assert list(s.origin.stored.values()) == [data]
    assert (s.stager.streamed, s.stager.fallbacks, len(s.stager)) == (1, 0, 0)


def test_an_origin_outside_the_placement_means_the_file_is_uploaded(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.origin.mine = False
    uid = s.start()
    s.send(uid, b"x" * 3000)
    assert not s.commit(uid, b"x" * 3000)
    assert s.origin.stored == {} and (s.stager.streamed, s.stager.fallbacks) == (0, 1)


def test_a_body_the_registry_did_not_append_makes_the_sizes_disagree(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    uid = s.start()
    s.send(uid, b"x" * 3000, append=False)  # refused by its handler (a bad Content-Range, say)
    s.send(uid, b"y" * 3000)  # the upload holds 0 bytes, the stage 3000: this one is not teed
    assert s.origin.patches == [("stage-0", 0)]
    assert not s.commit(uid, b"y" * 3000)
    assert s.origin.stored == {} and s.origin.dropped == ["stage-0"]


def test_a_chunk_that_did_not_go_through_the_stage_makes_the_sizes_disagree(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    uid = s.start()
    s.send(uid, b"x" * 3000)
    small = Deferred.fromCoroutine(_append_small(s.uploads, uid, b"y" * 10))  # not spooled: never teed
    result(small)
    assert not s.commit(uid, b"x" * 3000 + b"y" * 10)
    assert s.origin.stored == {}


async def _append_small(uploads: UploadArea, uid: str, data: bytes) -> int:
    import io

    return await uploads.append(uid, io.BytesIO(data))


def test_an_upload_begun_without_the_stage_is_never_staged(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    uid = s.start()
    result(Deferred.fromCoroutine(_append_small(s.uploads, uid, b"y" * 10)))
    s.send(uid, b"x" * 3000)
    assert s.origin.patches == [] and not s.commit(uid, b"y" * 10 + b"x" * 3000)


def test_a_digest_the_origin_refuses_is_decided_by_uploading_the_file(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    uid = s.start()
    s.send(uid, b"x" * 3000)
    assert not s.commit(uid, b"z" * 3000)  # the client names other bytes: the file upload gives the verdict
    assert s.origin.stored == {}


def test_a_failed_patch_leaves_the_client_alone_and_the_put_uploads_the_file(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.origin.fail_patch = OSError("connection refused")
    uid = s.start()
    s.send(uid, b"x" * 3000)
    assert not s.flow.paused
    assert not s.commit(uid, b"x" * 3000)


def held_client(tmp_path: Any) -> tuple[Setup, str, Any]:
    """An upload whose first body has sent more than ``HIGH_WATER`` bytes to an origin that takes nothing."""
    s = Setup(tmp_path)
    s.origin.held = True
    uid = s.start()
    spool = s.body(uid)
    spool.write(b"x" * (HIGH_WATER + 1))
    assert s.flow.paused  # the origin takes nothing: the client waits for it
    return s, uid, spool


def test_a_stalled_origin_holds_the_client_for_at_most_the_stall_time(tmp_path: Any) -> None:
    s, uid, spool = held_client(tmp_path)
    s.clock.advance(9.9)
    assert s.flow.paused
    s.clock.advance(0.2)
    assert not s.flow.paused  # given up: the client goes on, to the proxy's disk only
    spool.write(b"y" * 10)
    result(spool.done_receiving())
    result(s.uploads.append(uid, spool))
    assert not s.commit(uid, b"x" * (HIGH_WATER + 1) + b"y" * 10)


def test_an_origin_that_catches_up_lets_the_client_go_on(tmp_path: Any) -> None:
    s, uid, spool = held_client(tmp_path)
    chunk = spool._tee
    chunk.resumeProducing()
    assert not s.flow.paused and len(s.origin.staged["stage-0"]) == HIGH_WATER + 1
    result(spool.done_receiving())
    result(s.uploads.append(uid, spool))
    assert s.commit(uid, b"x" * (HIGH_WATER + 1))


def test_a_cancelled_upload_loses_its_stage_on_the_origin(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    uid = s.start()
    s.send(uid, b"x" * 3000)
    result(s.uploads.delete(uid))  # cancelled (or expired), or completed without the stage (already stored)
    assert s.origin.dropped == ["stage-0"] and len(s.stager) == 0


def test_a_client_gone_mid_body_gives_the_stage_up(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    uid = s.start()
    spool = s.body(uid)
    spool.write(b"x" * 3000)
    spool.close()  # the connection went away before the end of the body
    stage = s.stager._stages[uid]
    assert stage.broken is not None


def test_only_chunks_of_uploads_are_teed(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    uid = s.start()
    for method, path in [
        (b"POST", f"/v2/{NS}/blobs/uploads/{uid}"),
        (b"PUT", f"/v2/{NS}/manifests/v1"),
        (b"PATCH", f"/v2/Not_A_Name/blobs/uploads/{uid}"),
        (b"PATCH", f"/v2/{NS}/blobs/uploads/no-such-upload"),
    ]:
        spool = s.uploads.spool(pause=s.flow.pause, resume=s.flow.resume, line=(method, path.encode()))
        assert spool._tee is None, (method, path)
        spool.close()
    assert s.origin.patches == []


def test_the_stage_is_on_a_member_of_the_ring_not_on_what_the_proxy_was_given(tmp_path: Any) -> None:
    s = Setup(tmp_path)  # (a load balancer in front of the origins would spread one upload over several)
    uid = s.start()
    s.send(uid, b"x" * 3000)
    assert s.stager._stages[uid].base == "http://member-2:15002"


def test_a_put_whose_client_went_away_while_the_stage_was_sending_uploads_nothing(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    s.origin.held = True
    uid = s.start()
    s.send(uid, b"x" * 3000)  # the origin has not taken it yet
    digest = Digest.from_bytes(b"x" * 3000)
    putting = Deferred.fromCoroutine(s.stager.commit(uid, NS, digest, 3000))
    assert not putting.called
    putting.cancel()
    failure = outcome_of(putting)
    assert failure.check(CancelledError) and s.stager.fallbacks == 0


def test_a_failing_tee_leaves_the_body_to_the_spool(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    uid = s.start()
    spool = s.body(uid)

    class Broken:
        def write(self, data: bytes) -> None:
            raise RuntimeError("tee bug")

        def end(self) -> None:
            pass

        def abort(self, why: str) -> None:
            pass

    spool.tee(Broken())
    spool.write(b"x" * 3000)
    spool.write(b"y" * 10)
    result(spool.done_receiving())
    assert result(s.uploads.append(uid, spool)) == 3010
