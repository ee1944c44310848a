import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kraken.core import Digest, MetaInfo, MetaInfoError, PieceHasher, PieceLengthRule

MiB, GiB = 1 << 20, 1 << 30


def test_piece_length_rule_default():
    rule = PieceLengthRule.default()
    assert rule.piece_length(0) == MiB
    assert rule.piece_length(2 * GiB - 1) == MiB
    assert rule.piece_length(2 * GiB) == 4 * MiB
    assert rule.piece_length(8 * GiB) == 16 * MiB
    assert rule.piece_length(100 * GiB) == 32 * MiB


def test_piece_length_rule_from_mapping_and_validation():
    rule = PieceLengthRule.from_mapping({1000: 10, 0: 1})
    assert rule.piece_length(999) == 1
    assert rule.piece_length(1000) == 10
    with pytest.raises(ValueError):
        PieceLengthRule(((5, 1),))
    with pytest.raises(ValueError):
        PieceLengthRule(((0, 0),))
    with pytest.raises(ValueError):
        PieceLengthRule(((0, 1), (0, 2)))


def test_pieces_and_sums():
    data = bytes(range(256)) * 40  # 10240 bytes
    info = MetaInfo.from_bytes(data, 4096)
    assert info.num_pieces == 3
    assert [info.piece_size(i) for i in range(3)] == [4096, 4096, 2048]
    assert info.piece_offset(2) == 8192
    assert info.digest == Digest.from_bytes(data)
    for i in range(3):
        piece = data[i * 4096 : (i + 1) * 4096]
        assert info.piece_sums[i] == hashlib.sha256(piece).digest()
        assert info.piece_ok(i, piece)
    assert not info.piece_ok(0, b"x" * 4096)
    assert not info.piece_ok(2, data[8192:-1])
    with pytest.raises(IndexError):
        info.piece_size(3)


def test_empty_blob_has_one_empty_piece():
    info = MetaInfo.from_bytes(b"", 4)
    assert info.num_pieces == 1
    assert info.piece_size(0) == 0
    assert info.piece_ok(0, b"")


@given(st.binary(max_size=3000), st.integers(1, 700), st.lists(st.integers(1, 500), max_size=20))
def test_incremental_hashing_matches_one_shot(data, piece_length, cuts):
    hasher = PieceHasher(piece_length)
    pos = 0
    for cut in cuts:
        hasher.update(data[pos : pos + cut])
        pos += cut
    hasher.update(data[pos:])
    assert hasher.finish() == MetaInfo.from_bytes(data, piece_length)


@given(st.binary(max_size=2000), st.integers(1, 600))
def test_json_round_trip(data, piece_length):
    info = MetaInfo.from_bytes(data, piece_length)
    again = MetaInfo.from_json(info.to_json())
    assert again == info
    assert again.info_hash == info.info_hash


def test_info_hash_depends_on_piece_length_and_content():
    data = b"x" * 100
    assert MetaInfo.from_bytes(data, 10).info_hash != MetaInfo.from_bytes(data, 20).info_hash
    assert MetaInfo.from_bytes(data, 10).info_hash != MetaInfo.from_bytes(b"y" * 100, 10).info_hash
    # Canonical: the same metainfo always gives the same hash.
    assert MetaInfo.from_bytes(data, 10).info_hash == MetaInfo.from_bytes(data, 10).info_hash


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(version=2),
        lambda d: d.pop("length"),
        lambda d: d.update(length=-1),
        lambda d: d.update(length="10"),
        lambda d: d.update(piece_sums=d["piece_sums"][:-1]),
        lambda d: d.update(piece_sums=["zz" * 32] * len(d["piece_sums"])),
        lambda d: d.update(digest="md5:abc"),
        lambda d: d.update(info_hash="0" * 64),
    ],
)
def test_from_json_rejects_bad_documents(mutate):
    doc = json.loads(MetaInfo.from_bytes(b"a" * 50, 16).to_json())
    mutate(doc)
    with pytest.raises(MetaInfoError):
        MetaInfo.from_json(json.dumps(doc))


def test_from_json_rejects_non_json():
    with pytest.raises(MetaInfoError):
        MetaInfo.from_json(b"\xff not json")
    with pytest.raises(MetaInfoError):
        MetaInfo.from_json(b"[]")
