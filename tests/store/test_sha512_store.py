"""The store with sha512 blobs: kept apart under cache/sha512/, verified with SHA-512, evicted, walked."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from test_store_cas import result

from kraken.core import Digest, MetaInfo, PieceLengthRule
from kraken.origin.repair import list_blobs
from kraken.store import BlobCorrupt, CAStore, DigestMismatch, evict_idle
from kraken.workers import InlineWorker

DATA = b"0123456789" * 5
SHA512 = Digest.from_bytes(DATA, "sha512")
SHA256 = Digest.from_bytes(DATA)
RULE = PieceLengthRule(((0, 16),))


@pytest.fixture
def store(tmp_path: Path) -> CAStore:
    return CAStore(str(tmp_path), worker=InlineWorker(), piece_rule=RULE, now=lambda: 100.0)


def commit(store: CAStore, digest: Digest, data: bytes = DATA) -> MetaInfo:
    uid = result(store.uploads.create())
    result(store.uploads.append(uid, io.BytesIO(data), offset=0, length=len(data)))
    return result(store.commit(uid, digest)).metainfo


def test_the_same_bytes_under_both_algorithms_are_two_blobs_in_two_places(store: CAStore, tmp_path: Path) -> None:
    info = commit(store, SHA512)
    commit(store, SHA256)
    assert info.digest == SHA512 and info.piece_sums == MetaInfo.from_bytes(DATA, 16).piece_sums
    assert store.blob_path(SHA512) == str(
        tmp_path / "cache" / "sha512" / SHA512.hex[:2] / SHA512.hex[2:4] / SHA512.hex / "data"
    )
    assert store.blob_path(SHA256) == str(tmp_path / "cache" / SHA256.hex[:2] / SHA256.hex[2:4] / SHA256.hex / "data")
    assert result(store.stat(SHA512)) == result(store.stat(SHA256)) == len(DATA)
    assert result(store.metainfo(SHA512)) == info
    assert list_blobs(str(tmp_path)) == sorted([SHA256, SHA512], key=str)


def test_a_sha512_upload_that_does_not_match_is_refused(store: CAStore) -> None:
    with pytest.raises(DigestMismatch):
        commit(store, Digest.from_bytes(b"other", "sha512"))
    assert result(store.stat(SHA512)) is None


def test_a_download_is_checked_with_sha512_before_it_is_installed(store: CAStore) -> None:
    info = MetaInfo.from_bytes(DATA, 16, "sha512")
    partial = result(store.downloads.open(info))
    for i in range(info.num_pieces):
        assert result(partial.write_piece(i, DATA[i * 16 : (i + 1) * 16]))
    result(store.downloads.finish(partial))
    assert Path(store.blob_path(SHA512)).read_bytes() == DATA
    # Pieces that match a forged metainfo but not the sha512 asked for are never installed.
    forged = MetaInfo(Digest.from_bytes(b"x", "sha512"), info.length, info.piece_length, info.piece_sums)
    partial = result(store.downloads.open(forged))
    for i in range(forged.num_pieces):
        result(partial.write_piece(i, DATA[i * 16 : (i + 1) * 16]))
    with pytest.raises(BlobCorrupt, match="sha512:"):
        result(store.downloads.finish(partial))
    assert result(store.stat(forged.digest)) is None


def test_idle_sha512_blobs_are_evicted_like_sha256_ones(store: CAStore, tmp_path: Path) -> None:
    commit(store, SHA512)
    commit(store, SHA256)
    eviction = result(evict_idle(str(tmp_path), now=1e9, tti=60.0, keep=lambda d: False, worker=InlineWorker()))
    assert sorted(eviction.evicted, key=str) == sorted([SHA256, SHA512], key=str)
    assert not os.path.exists(store.blob_path(SHA512))
