import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kraken.core import Digest, DigestError

HEX = "a" * 64


def test_parse_round_trip():
    d = Digest.parse(f"sha256:{HEX}")
    assert d.hex == HEX
    assert str(d) == f"sha256:{HEX}"
    assert d.shard == ("aa", "aa")


@pytest.mark.parametrize(
    "text",
    [
        HEX,  # no algorithm
        f"sha512:{HEX}",
        f"md5:{HEX[:32]}",
        f"sha256:{HEX[:63]}",
        f"sha256:{HEX}0",
        f"sha256:{HEX.upper()}",
        f"SHA256:{HEX}",
        f"sha256:{HEX[:-1]}g",
        f"sha256: {HEX}",
        f"sha256:{HEX}\n",
        "",
        "sha256:",
    ],
)
def test_strict_parsing(text):
    with pytest.raises(DigestError):
        Digest.parse(text)


def test_non_text_refused():
    with pytest.raises(DigestError):
        Digest.parse(b"sha256:" + HEX.encode())  # type: ignore[arg-type]


@given(st.binary(max_size=256))
def test_from_bytes_matches_hashlib(data):
    d = Digest.from_bytes(data)
    assert d.hex == hashlib.sha256(data).hexdigest()
    assert Digest.parse(str(d)) == d


def test_equality_and_hash():
    assert Digest(HEX) == Digest.parse(f"sha256:{HEX}")
    assert len({Digest(HEX), Digest(HEX)}) == 1
