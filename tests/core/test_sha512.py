"""sha512 digests in the core: parsing, the algorithm told by the hex's length, shards, and metainfo."""

import hashlib

import pytest

from kraken.core import Digest, DigestError, MetaInfo

DATA = b"kraken" * 1000
HEX512 = hashlib.sha512(DATA).hexdigest()


def test_parse_and_print_a_sha512_digest():
    d = Digest.parse(f"sha512:{HEX512}")
    assert (d.algorithm, d.hex, str(d)) == ("sha512", HEX512, f"sha512:{HEX512}")
    assert d == Digest.from_bytes(DATA, "sha512") == Digest(HEX512, "sha512")
    assert d.raw == hashlib.sha512(DATA).digest()
    assert d.hasher().name == "sha512"


def test_the_bare_hex_tells_its_algorithm_by_its_length():
    assert Digest(HEX512).algorithm == "sha512"
    assert Digest("a" * 64).algorithm == "sha256"
    assert Digest(HEX512) != Digest(HEX512[:64])


@pytest.mark.parametrize(
    "text",
    [
        f"sha512:{HEX512[:64]}",
        f"sha512:{HEX512}0",
        f"sha512:{HEX512.upper()}",
        f"sha256:{HEX512}",
        "sha384:" + "a" * 96,
    ],
)
def test_a_sha512_must_have_128_lowercase_hex(text):
    with pytest.raises(DigestError):
        Digest.parse(text)


def test_sha512_blobs_shard_under_their_own_directory_and_sha256_ones_do_not_move():
    assert Digest(HEX512).shard == ("sha512", HEX512[:2], HEX512[2:4])
    assert Digest("ab" * 32).shard == ("ab", "ab")


def test_the_info_hash_of_a_sha256_blob_is_the_one_it_always_had():
    # Computed by the version before sha512 existed: a store written then keeps its torrents' names.
    info = MetaInfo.from_bytes(DATA, 1024)
    assert info.info_hash == "83ff80020c16d65511a6a0235f0ab0b88d87a1b81348b49ed0fe0cac7af685b6"


def test_a_sha512_blob_is_named_by_its_sha512_and_cut_into_sha256_pieces():
    info = MetaInfo.from_bytes(DATA, 1024, "sha512")
    plain = MetaInfo.from_bytes(DATA, 1024)
    assert info.digest == Digest.from_bytes(DATA, "sha512")
    assert info.piece_sums == plain.piece_sums
    assert info.piece_ok(0, DATA[:1024])
    assert info.info_hash != plain.info_hash
    assert MetaInfo.from_json(info.to_json()) == info
