from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kraken.core import Digest
from kraken.registry.errors import DigestInvalid, NameInvalid, PaginationNumberInvalid, TagInvalid
from kraken.registry.names import (
    check_name,
    check_tag,
    is_valid_name,
    is_valid_tag,
    parse_digest,
    parse_pagination,
    parse_reference,
)

# The spec's grammar, written independently of the module's.
SPEC_NAME = re.compile(r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*")
SPEC_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
HEX = "a" * 64


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "library/ubuntu",
        "a.b_c__d-e--f",
        "a/b/c/d",
        "0",
        "foo-bar/baz.qux",
        "x" * 255,
        "a/blobs/b",
        "_catalog1x"[1:],
    ],
)
def test_valid_names(name: str) -> None:
    assert is_valid_name(name)
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "A",
        "Library/ubuntu",
        "-a",
        "a-",
        "a//b",
        "/a",
        "a/",
        "a___b",
        "a..b",
        "a._b",
        "_catalog",
        "a:b",
        "a b",
        "é",
        "x" * 256,
        "a/" * 127 + "ab",
    ],
)
def test_invalid_names(name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(NameInvalid) as e:
        check_name(name)
    assert e.value.status == 400
    assert e.value.code == "NAME_INVALID"


@given(st.text(alphabet="ab0._-/A:", max_size=40))
def test_name_matches_spec_grammar(name: str) -> None:
    assert is_valid_name(name) == bool(SPEC_NAME.fullmatch(name))


@given(st.from_regex(SPEC_NAME, fullmatch=True))
def test_spec_names_accepted_up_to_255(name: str) -> None:
    assert is_valid_name(name) == (len(name) <= 255)


@pytest.mark.parametrize("tag", ["latest", "v1.2.3", "_x", "A-b_c.d", "9", "t" * 128])
def test_valid_tags(tag: str) -> None:
    assert is_valid_tag(tag)
    assert check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".x", "-x", "t" * 129, "a:b", "a/b", "a b", "ü"])
def test_invalid_tags(tag: str) -> None:
    assert not is_valid_tag(tag)
    with pytest.raises(TagInvalid):
        check_tag(tag)


@given(st.text(alphabet="aZ9_.-:/ ", max_size=140))
def test_tag_matches_spec_grammar(tag: str) -> None:
    assert is_valid_tag(tag) == bool(SPEC_TAG.fullmatch(tag))


def test_reference_is_tag_or_digest() -> None:
    assert parse_reference("latest") == "latest"
    assert parse_reference(f"sha256:{HEX}") == Digest(HEX)
    with pytest.raises(DigestInvalid):
        parse_reference("sha256:abc")
    with pytest.raises(DigestInvalid):
        parse_reference(f"sha512:{HEX}")
    with pytest.raises(TagInvalid):
        parse_reference(".bad")


@pytest.mark.parametrize(
    "text", ["", "sha256", f"sha256:{HEX.upper()}", f"sha256:{HEX}0", f"md5:{HEX}", f" sha256:{HEX}", HEX]
)
def test_malformed_digests(text: str) -> None:
    with pytest.raises(DigestInvalid) as e:
        parse_digest(text)
    assert e.value.status == 400


@given(st.binary(max_size=64))
def test_parse_digest_round_trip(data: bytes) -> None:
    d = Digest.from_bytes(data)
    assert parse_digest(str(d)) == d


def args(**kw: str) -> dict[bytes, list[bytes]]:
    return {k.encode(): [v.encode()] for k, v in kw.items()}


def test_pagination_defaults() -> None:
    assert parse_pagination({}, 100) == (None, None)
    assert parse_pagination(args(last=""), 100) == (None, None)


@pytest.mark.parametrize(
    ("n", "expected"),
    [("0", 0), ("1", 1), ("100", 100), ("101", 100), ("007", 7), ("9" * 40, 100), ("0" * 30 + "5", 5)],
)
def test_pagination_n(n: str, expected: int) -> None:
    assert parse_pagination(args(n=n, last="b"), 100) == (expected, "b")


@pytest.mark.parametrize("n", ["", "-1", "+1", "1.5", "abc", " 1", "1_0", "٣"])
def test_pagination_bad_n(n: str) -> None:
    with pytest.raises(PaginationNumberInvalid) as e:
        parse_pagination(args(n=n), 100)
    assert e.value.status == 400
    assert e.value.code == "PAGINATION_NUMBER_INVALID"


@given(st.integers(min_value=0, max_value=10**30), st.integers(min_value=1, max_value=5000))
def test_pagination_caps(n: int, cap: int) -> None:
    assert parse_pagination(args(n=str(n)), cap) == (min(n, cap), None)


@pytest.mark.parametrize("last", [b"\xff", b"-tag", b"a" * 129, b"a:b", b"x/y"])
def test_pagination_last_that_is_no_tag(last: bytes) -> None:
    # Found by the adversarial suite: ``last=%ff`` reached the build-index, whose refusal became a 500.
    with pytest.raises(TagInvalid) as e:
        parse_pagination({b"last": [last]}, 100)
    assert e.value.status == 400


@pytest.mark.parametrize("last", [b"\xff", b"UPPER", b"a//b", b"-x"])
def test_pagination_last_that_is_no_repository(last: bytes) -> None:
    with pytest.raises(NameInvalid) as e:
        parse_pagination({b"last": [last]}, 100, catalog=True)
    assert e.value.status == 400
    assert parse_pagination({b"last": [b"team/app"]}, 100, catalog=True) == (None, "team/app")
