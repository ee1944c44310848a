"""The pieces of ``kraken swarm`` and ``kraken preheat`` that need no daemon: the terminal view of a swarm
document (values shown as text, never as rich markup), error texts, references."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from kraken.cli.calls import answer_error
from kraken.cli.preheat import parse_reference
from kraken.cli.swarm import bar, check_key, rate, size, view

DOC: dict[str, Any] = {
    "digest": "sha256:" + "a" * 64, "info_hash": "b" * 64, "peer_count": 1, "complete": 0,
    "rate_in": 1048576.0, "rate_out": 0.0,
    "peers": [{
        "peer_id": "[bold red]x" + "c" * 30, "address": "[link=evil]10.0.0.1:1", "kind": "agent", "complete": False,
        "age": 0.5, "progress": 50.0, "have": 1, "pieces": 2, "bytes_in": 1024, "bytes_out": 0, "rate_in": 512.0,
        "rate_out": 0.0, "sources": [{"peer_id": "d" * 40, "origin": True, "bytes": 1024, "rate": 512.0}],
    }],
    "origins": [{"peer_id": "d" * 40, "bytes_out": 1024, "rate_out": 512.0}],
}  # fmt: skip


def render(doc: dict[str, Any]) -> str:
    out = io.StringIO()
    Console(file=out, width=200, highlight=False).print(view(doc))
    return out.getvalue()


def test_the_view_shows_values_as_text() -> None:
    text = render(DOC)
    assert "[bold red]x" in text  # escaped: shown, not applied
    assert "##########..........  50.0 %" in text
    assert "origin dddddddddddd: 1.0 KiB (512 B/s)" in text
    assert "1 peers, 0 complete; in 1.0 MiB/s, out 0 B/s" in text


def test_formats() -> None:
    assert (size(0), size(1536), size(None), rate(3 << 30)) == ("0 B", "1.5 KiB", "-", "3.0 GiB/s")
    assert bar(None) == "not reported" and bar(100, 4) == "#### 100.0 %"


def test_keys_and_references() -> None:
    assert check_key("e" * 64) == "e" * 64
    with pytest.raises(ValueError):
        check_key("sha256:" + "E" * 64)
    assert parse_reference("reg/lib/x:v1") == {"repository": "reg/lib/x", "tag": "v1"}
    assert parse_reference("lib/x@sha256:" + "f" * 64) == {"repository": "lib/x", "digest": "sha256:" + "f" * 64}


def test_error_texts() -> None:
    assert answer_error(b'{"error": "no swarm"}', 404) == "no swarm"
    assert answer_error(b'{"errors": [{"code": "X", "message": "no such tag"}]}', 404) == "no such tag"
    assert answer_error(b"<html>", 502) == "HTTP 502"
