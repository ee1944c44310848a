"""CAStore: verified atomic commit; nothing half-done is ever visible."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from kraken.core import Digest, MetaInfo, PieceLengthRule
from kraken.store import CAStore, DigestMismatch, UploadUnknown
from kraken.store import cas as cas_module
from kraken.workers import InlineWorker

DATA = b"0123456789" * 5
DIGEST = Digest.from_bytes(DATA)
RULE = PieceLengthRule(((0, 8), (40, 16)))


def result(d: Deferred[Any] | Any) -> Any:
    if not isinstance(d, Deferred):
        d = Deferred.fromCoroutine(d)
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "did not finish synchronously"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


class Now:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make_store(root: Path, now: Now | None = None) -> CAStore:
    return CAStore(str(root), worker=InlineWorker(), piece_rule=RULE, now=now or Now())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(root: Path) -> CAStore:
    return make_store(root)


def staged(store: CAStore, data: bytes = DATA) -> str:
    uid = result(store.uploads.create())
    result(store.uploads.append(uid, io.BytesIO(data), offset=0, length=len(data)))
    return uid


def blobs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "cache").glob("*/*/*"))


def test_commit(store: CAStore, root: Path) -> None:
    assert result(store.stat(DIGEST)) is None
    uid = staged(store)
    committed = result(store.commit(uid, DIGEST))
    assert committed.created
    assert committed.metainfo == MetaInfo.from_bytes(DATA, 16), "the piece rule picks 16 for 50 bytes"
    assert result(store.stat(DIGEST)) == len(DATA)
    assert result(store.metainfo(DIGEST)) == committed.metainfo
    assert Path(store.blob_path(DIGEST)).read_bytes() == DATA
    assert blobs(root) == [DIGEST.hex]
    assert os.listdir(root / "uploads") == []
    assert os.listdir(root / "tmp") == []
    with pytest.raises(UploadUnknown):
        store.uploads.size(uid)


def test_two_commits_of_one_blob_both_succeed_and_store_it_once(store: CAStore, root: Path) -> None:
    first, second = staged(store), staged(store)
    a = result(store.commit(first, DIGEST))
    b = result(store.commit(second, DIGEST))
    assert (a.created, b.created) == (True, False)
    assert a.metainfo == b.metainfo
    assert blobs(root) == [DIGEST.hex]
    assert os.listdir(root / "uploads") == []
    assert os.listdir(root / "tmp") == []


def test_losing_the_rename_race_is_success(store: CAStore, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both commits pass the "already there?" check, then race on the rename."""
    first, second = staged(store), staged(store)
    result(store.commit(first, DIGEST))
    final = os.path.dirname(store.blob_path(DIGEST))
    real_isdir = os.path.isdir
    monkeypatch.setattr(cas_module.os.path, "isdir", lambda p: False if p == final else real_isdir(p))
    lost = result(store.commit(second, DIGEST))
    assert not lost.created
    assert blobs(root) == [DIGEST.hex]
    assert Path(store.blob_path(DIGEST)).read_bytes() == DATA
    assert os.listdir(root / "tmp") == [], "the loser's staging directory is removed"
    assert os.listdir(root / "uploads") == []


def test_digest_mismatch_leaves_nothing_visible(store: CAStore, root: Path) -> None:
    wrong = Digest.from_bytes(b"something else")
    uid = staged(store)
    with pytest.raises(DigestMismatch) as e:
        result(store.commit(uid, wrong))
    assert (e.value.expected, e.value.actual) == (wrong, DIGEST)
    assert result(store.stat(wrong)) is None
    assert result(store.stat(DIGEST)) is None
    assert result(store.metainfo(wrong)) is None
    assert blobs(root) == []
    assert os.listdir(root / "uploads") == [], "the bad upload is deleted"
    assert os.listdir(root / "tmp") == []


def test_incomplete_upload_does_not_commit(store: CAStore) -> None:
    uid = staged(store, DATA[:20])
    with pytest.raises(DigestMismatch):
        result(store.commit(uid, DIGEST))
    assert result(store.stat(DIGEST)) is None


def test_commit_of_unknown_upload(store: CAStore) -> None:
    with pytest.raises(UploadUnknown):
        result(store.commit("0" * 32, DIGEST))


def test_leftovers_in_tmp_are_cleaned_at_startup(store: CAStore, root: Path) -> None:
    half = root / "tmp" / "deadbeef"
    half.mkdir()
    (half / "data").write_bytes(DATA)
    (half / "metainfo").write_bytes(b"{}")
    (root / "tmp" / "empty").mkdir()
    make_store(root)
    assert os.listdir(root / "tmp") == []
    assert result(store.stat(DIGEST)) is None


def test_crash_mid_upload_is_never_a_blob(store: CAStore, root: Path) -> None:
    """A process died while uploading: the file sits in uploads/ (whole, even)."""
    uid = staged(store)
    again = make_store(root)
    assert result(again.stat(DIGEST)) is None
    assert result(again.metainfo(DIGEST)) is None
    assert blobs(root) == []
    assert again.uploads.size(uid) == len(DATA), "the upload can be adopted and finished"
    assert result(again.commit(uid, DIGEST)).created
    assert result(again.stat(DIGEST)) == len(DATA)


def test_touch_records_the_access_time(root: Path) -> None:
    now = Now()
    store = make_store(root, now)
    result(store.commit(staged(store), DIGEST))
    access = Path(store.blob_path(DIGEST)).parent / "access"
    assert float(access.read_text()) == 100.0
    now.t = 250.5
    result(store.touch(DIGEST))
    assert float(access.read_text()) == 250.5
    result(store.touch(Digest.from_bytes(b"absent")))  # no blob: nothing happens
    assert blobs(root) == [DIGEST.hex]


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 39, 40, 41, 64, 100, 257])
def test_piece_sums_match_the_reference_for_any_size(store: CAStore, size: int) -> None:
    """Commit hashes the pieces in two halves; the result must equal a
    one-pass MetaInfo whatever the piece count (1, odd, even)."""
    data = bytes((i * 7) % 251 for i in range(size))
    committed = result(store.commit(staged(store, data), Digest.from_bytes(data)))
    assert committed.metainfo == MetaInfo.from_bytes(data, RULE.piece_length(size))
    assert result(store.metainfo(Digest.from_bytes(data))) == committed.metainfo


def spooled(store: CAStore, chunks: list[bytes]) -> str:
    """An upload whose whole body came through the upload area's spool (as an origin's PATCH does)."""
    uid = result(store.uploads.create())
    body = store.uploads.spool(pause=lambda: None, resume=lambda: None)
    for chunk in chunks:
        body.write(chunk)
    result(body.done_receiving())
    size = sum(map(len, chunks))
    assert result(store.uploads.append(uid, body, offset=0, length=size)) == size
    body.close()
    return uid


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 39])
def test_a_spooled_upload_is_committed_with_the_piece_sums_made_as_it_arrived(
    store: CAStore, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    data = bytes(range(size))
    monkeypatch.setattr(cas_module, "_hash_pieces", None)  # no second read of the data
    uid = spooled(store, [data[:3], data[3:5], data[5:]])
    committed = result(store.commit(uid, Digest.from_bytes(data)))
    assert committed.metainfo == MetaInfo.from_bytes(data, 8)


def test_piece_sums_of_another_piece_length_are_made_at_commit(store: CAStore) -> None:
    data = b"x" * 45  # the rule picks 16 from 40 bytes on: the spool hashed 8-byte pieces
    uid = spooled(store, [data[:20], data[20:]])
    assert result(store.commit(uid, Digest.from_bytes(data))).metainfo == MetaInfo.from_bytes(data, 16)


def test_a_later_chunk_drops_the_piece_sums_made_by_the_spool(store: CAStore) -> None:
    uid = spooled(store, [b"a" * 10])
    result(store.uploads.append(uid, io.BytesIO(b"b" * 5), offset=10, length=5))
    data = b"a" * 10 + b"b" * 5
    assert result(store.commit(uid, Digest.from_bytes(data))).metainfo == MetaInfo.from_bytes(data, 8)
