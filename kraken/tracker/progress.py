"""The ``progress`` object of an announce: what a peer has and has moved, for the live swarm page.

::

    "progress": {"have": 12, "pieces": 40, "bytes_in": 50331648, "bytes_out": 8388608,
                 "rate_in": 20971520.0, "rate_out": 4194304.0,
                 "sources": [{"peer_id": "<40 or 64 hex>", "origin": true, "bytes": 33554432, "rate": 8388608.0}]}

``have`` of ``pieces`` are on the peer's disk; ``bytes_in`` and ``bytes_out`` count the bytes of pieces it
received (verified) and sent for this blob; ``rate_in`` and ``rate_out`` are bytes per second since its previous
announce; ``sources`` (at most ``MAX_SOURCES``) are the peers it received the most from, with their bytes and
rate, ``origin`` true for an origin. Agents send it with ``p2p.announce_progress``
(``kraken.p2p.traffic``); it is optional, and an announce without it is answered as before.

``check_progress`` is the whole cost an announce pays for it: the checks below, strict (exact keys, exact types,
bounded numbers, peer ids in lowercase hex) so that what the page later shows is what was checked here. The
tracker keeps the checked dict with the peer's entry (``kraken.tracker.swarm.Entry.progress``), replaced by
the next announce and gone with the entry.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, NoReturn

from kraken.core.peer import is_peer_id

KEYS = frozenset({"have", "pieces", "bytes_in", "bytes_out", "rate_in", "rate_out", "sources"})
SOURCE_KEYS = frozenset({"peer_id", "origin", "bytes", "rate"})
#: The most sources one progress names (``kraken.p2p.traffic.MAX_REPORTED``).
MAX_SOURCES = 16
#: Bounds of the counters: a blob of at most 2**31 pieces, counters below 2**63, rates below 2**53.
MAX_PIECES = 1 << 31
MAX_COUNT = (1 << 63) - 1
MAX_RATE = float(1 << 53)


class ProgressError(ValueError):
    """A ``progress`` object that is not one (its message says what is off)."""


def _count(doc: dict[str, Any], key: str, bound: int = MAX_COUNT) -> int:
    value = doc[key]
    if type(value) is not int or not 0 <= value <= bound:
        raise ProgressError(f"progress.{key} must be an integer from 0 to {bound}")
    return value


def _rate(doc: dict[str, Any], key: str, where: str = "progress") -> None:
    value = doc[key]
    if type(value) not in (int, float) or not (0 <= value <= MAX_RATE) or math.isnan(value):
        raise ProgressError(f"{where}.{key} must be a number of bytes per second from 0 to 2**53")


def _keys(doc: object, expected: frozenset[str], where: str) -> dict[str, Any]:
    if type(doc) is not dict:
        raise ProgressError(f"{where} must be a JSON object")
    if doc.keys() != expected:
        missing, unknown = sorted(expected - doc.keys()), sorted(doc.keys() - expected)
        why = f"lacks {', '.join(missing)}" if missing else f"has unknown keys {', '.join(map(str, unknown))[:200]}"
        raise ProgressError(f"{where} {why}")
    return doc


def check_progress(value: object) -> dict[str, Any]:
    """``value`` if it is a valid ``progress`` object; ``ProgressError`` saying why not."""
    doc = _keys(value, KEYS, "progress")
    pieces = _count(doc, "pieces", MAX_PIECES)
    if _count(doc, "have", MAX_PIECES) > pieces:
        raise ProgressError("progress.have must not exceed progress.pieces")
    _count(doc, "bytes_in")
    _count(doc, "bytes_out")
    _rate(doc, "rate_in")
    _rate(doc, "rate_out")
    sources = doc["sources"]
    if type(sources) is not list or len(sources) > MAX_SOURCES:
        raise ProgressError(f"progress.sources must be a list of at most {MAX_SOURCES} sources")
    for i, item in enumerate(sources):
        if not _fine(item):
            _source_error(i, item)
    return doc


def _fine(item: Any) -> bool:
    """Whether ``item`` is a valid source: the fast path, one expression (``_source_error`` says what is off)."""
    return (
        type(item) is dict
        and item.keys() == SOURCE_KEYS
        and is_peer_id(item["peer_id"])
        and type(item["origin"]) is bool
        and type(item["bytes"]) is int
        and 0 <= item["bytes"] <= MAX_COUNT
        and type(item["rate"]) in (int, float)
        and 0 <= item["rate"] <= MAX_RATE
    )


def _source_error(i: int, item: object) -> NoReturn:
    """Raise the ``ProgressError`` that says what is off in source ``i``."""
    where = f"progress.sources[{i}]"
    source = _keys(item, SOURCE_KEYS, where)
    if not is_peer_id(source["peer_id"]):
        raise ProgressError(f"{where}.peer_id must be 40 or 64 lowercase hex characters")
    if type(source["origin"]) is not bool:
        raise ProgressError(f"{where}.origin must be true or false")
    if type(source["bytes"]) is not int or not 0 <= source["bytes"] <= MAX_COUNT:
        raise ProgressError(f"{where}.bytes must be an integer from 0 to {MAX_COUNT}")
    _rate(source, "rate", where)
    raise ProgressError(f"{where} is not a valid source")


class Progress(NamedTuple):
    """A checked ``progress`` of an announce of the blob ``digest``, as the peer store keeps it."""

    digest: str
    doc: dict[str, Any]
