"""The pure header parsing the handlers share (``kraken.registry.messages``): no I/O."""

from __future__ import annotations

import io

import pytest

from kraken.core import Digest
from kraken.registry.messages import backwards_range, body_length, etag_matches, parse_content_range, range_value

D = Digest.from_bytes(b"x")


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (b"0-4", (0, 4)),
        (b" 5-9 ", (5, 9)),
        (b"bytes=0-2", (0, 2)),
        (b"bytes 0-2/3", (0, 2)),
        (b"0-2/*", (0, 2)),
        (b"7-7", (7, 7)),
        (b"5-0", None),
        (b"abc", None),
        (b"-5", None),
        (b"0-", None),
        (b"bytes=0-", None),
        (b"0-1234567890123456789", None),  # more digits than any upload holds
    ],
)
def test_parse_content_range(value: bytes, parsed: tuple[int, int] | None) -> None:
    assert parse_content_range(value) == parsed


@pytest.mark.parametrize(
    ("value", "backwards"),
    [
        (b"bytes=500-0", True),
        (b"bytes=0-10, 20-5", True),
        (b"BYTES = 9 - 1", True),
        (b"bytes=0-10", False),
        (b"bytes=-500", False),
        (b"bytes=500-", False),
        (b"items=1-0", False),
        (b"1-0", False),
    ],
)
def test_backwards_range(value: bytes, backwards: bool) -> None:
    assert backwards_range(value) is backwards


def test_range_value_names_the_last_byte() -> None:
    assert (range_value(0), range_value(1), range_value(10)) == (b"0-0", b"0-0", b"0-9")


@pytest.mark.parametrize(
    ("values", "matches"),
    [
        ([f'"{D}"'.encode()], True),
        ([f'W/"{D}"'.encode()], True),
        ([b"*"], True),
        ([f'"other", "{D}"'.encode()], True),
        ([b'"other"', f'"{D}"'.encode()], True),
        ([b'"other"'], False),
        ([], False),
    ],
)
def test_etag_matches(values: list[bytes], matches: bool) -> None:
    assert etag_matches(values, D) is matches


def test_body_length_does_not_move_the_read_position() -> None:
    body = io.BytesIO(b"0123456789")
    body.read(3)
    assert body_length(body) == 7
    assert body.read() == b"3456789"
    assert body_length(None) == 0
