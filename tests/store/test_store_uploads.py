"""UploadArea: appends at the end only, truncation-safe, running SHA-256, restart, expiry."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from kraken.core import Digest
from kraken.store import RangeMismatch, UploadArea, UploadTruncated, UploadUnknown
from kraken.workers import InlineWorker


def result(d: Deferred[Any] | Any) -> Any:
    """The result of an already-fired Deferred or coroutine (InlineWorker: everything is synchronous)."""
    if not isinstance(d, Deferred):
        d = Deferred.fromCoroutine(d)
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "did not finish synchronously"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


@pytest.fixture
def root(tmp_path: Path) -> str:
    return str(tmp_path / "uploads")


@pytest.fixture
def area(root: str) -> UploadArea:
    return UploadArea(root, InlineWorker())


def content(area: UploadArea, uid: str) -> bytes:
    with open(area.path(uid), "rb") as f:
        return f.read()


def test_append_and_running_digest(area: UploadArea) -> None:
    uid = result(area.create())
    assert area.size(uid) == 0
    assert result(area.append(uid, io.BytesIO(b"hello "), offset=0)) == 6
    assert result(area.append(uid, io.BytesIO(b"world"), offset=6, length=5)) == 11
    assert content(area, uid) == b"hello world"
    assert result(area.digest(uid)) == Digest(hashlib.sha256(b"hello world").hexdigest())


def test_append_without_offset_goes_to_the_end(area: UploadArea) -> None:
    uid = result(area.create())
    result(area.append(uid, io.BytesIO(b"ab")))
    result(area.append(uid, io.BytesIO(b"cd")))
    assert content(area, uid) == b"abcd"


def test_append_reads_only_length_bytes(area: UploadArea) -> None:
    uid = result(area.create())
    source = io.BytesIO(b"abcdef")
    assert result(area.append(uid, source, offset=0, length=4)) == 4
    assert content(area, uid) == b"abcd"


@pytest.mark.parametrize("offset", [1, 3, 100])
def test_offset_mismatch_is_refused(area: UploadArea, offset: int) -> None:
    uid = result(area.create())
    result(area.append(uid, io.BytesIO(b"ab"), offset=0))
    with pytest.raises(RangeMismatch) as e:
        result(area.append(uid, io.BytesIO(b"zz"), offset=offset))
    assert (e.value.expected, e.value.got) == (2, offset)
    assert content(area, uid) == b"ab"
    assert area.size(uid) == 2


def test_truncated_body_keeps_the_old_size(area: UploadArea) -> None:
    uid = result(area.create())
    result(area.append(uid, io.BytesIO(b"abc"), offset=0))
    with pytest.raises(UploadTruncated):
        result(area.append(uid, io.BytesIO(b"defg"), offset=3, length=10))
    assert area.size(uid) == 3
    assert content(area, uid) == b"abc", "the partial chunk is cut off the file again"
    assert result(area.digest(uid)) == Digest.from_bytes(b"abc"), "the running hash is untouched"
    result(area.append(uid, io.BytesIO(b"defg"), offset=3, length=4))
    assert result(area.digest(uid)) == Digest.from_bytes(b"abcdefg")


def test_failing_source_keeps_the_old_size(area: UploadArea) -> None:
    class Broken(io.RawIOBase):
        def __init__(self) -> None:
            self.calls = 0

        def read(self, n: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 1:
                raise OSError("connection reset")
            return b"xy"

    uid = result(area.create())
    result(area.append(uid, io.BytesIO(b"a"), offset=0))
    with pytest.raises(OSError, match="connection reset"):
        result(area.append(uid, Broken(), offset=1))
    assert area.size(uid) == 1
    assert content(area, uid) == b"a"


def test_unknown_uploads(area: UploadArea) -> None:
    for uid in ["0" * 32, "../../etc/passwd", ""]:
        with pytest.raises(UploadUnknown):
            area.size(uid)
        with pytest.raises(UploadUnknown):
            result(area.append(uid, io.BytesIO(b"x")))


def test_delete(area: UploadArea) -> None:
    uid = result(area.create())
    result(area.delete(uid))
    assert not os.path.exists(area.path(uid))
    with pytest.raises(UploadUnknown):
        result(area.append(uid, io.BytesIO(b"x")))
    result(area.delete(uid))  # twice is fine


def test_adopt_after_restart(root: str, area: UploadArea) -> None:
    uid = result(area.create())
    result(area.append(uid, io.BytesIO(b"before restart "), offset=0))
    again = UploadArea(root, InlineWorker())
    assert again.size(uid) == 15
    with pytest.raises(RangeMismatch):
        result(again.append(uid, io.BytesIO(b"x"), offset=0))
    result(again.append(uid, io.BytesIO(b"and after"), offset=15))
    assert result(again.digest(uid)) == Digest.from_bytes(b"before restart and after"), "hashed from disk"


def test_expire_deletes_only_stale_uploads(area: UploadArea) -> None:
    stale, fresh = result(area.create()), result(area.create())
    os.utime(area.path(stale), (1000, 1000))
    os.utime(area.path(fresh), (4000, 4000))
    (tmp_dir := Path(area.path(stale)).parent / "not-an-upload").write_bytes(b"")
    os.utime(tmp_dir, (0, 0))
    assert result(area.expire(now=5000, max_age=3600)) == [stale]
    assert not os.path.exists(area.path(stale))
    assert os.path.exists(area.path(fresh))
    assert tmp_dir.exists(), "files that are not uploads are left alone"
    with pytest.raises(UploadUnknown):
        area.size(stale)


def test_expire_spares_an_upload_being_appended(area: UploadArea) -> None:
    uid = result(area.create())
    os.utime(area.path(uid), (0, 0))
    up = area._live[uid]
    up.lock.acquire()  # an append in progress
    try:
        result(area.expire(now=5000, max_age=10))
        assert os.path.exists(area.path(uid))
    finally:
        up.lock.release()


def test_live_size_never_takes_an_upload_from_the_disk(area: UploadArea, root: str) -> None:
    uid = result(area.create())
    result(area.append(uid, io.BytesIO(b"abc")))
    assert area.live_size(uid) == 3
    stranger = "f" * 32
    Path(root, stranger).write_bytes(b"left by an earlier run")
    assert area.live_size(stranger) is None
    assert area.live_size(stranger) is None, "and it is still not adopted"


def test_on_gone_hears_of_every_upload_deleted_or_moved_away(area: UploadArea) -> None:
    gone: list[str] = []
    area.on_gone = gone.append
    first, second = result(area.create()), result(area.create())
    result(area.delete(first))
    area.forget(second)
    assert gone == [first, second]


def test_a_failing_on_gone_hook_does_not_stop_a_delete(area: UploadArea) -> None:
    def broken(uid: str) -> None:
        raise RuntimeError("hook bug")

    area.on_gone = broken
    uid = result(area.create())
    result(area.delete(uid))
    assert not os.path.exists(area.path(uid))
