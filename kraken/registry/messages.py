"""What every registry handler reads from requests and writes to responses.

Pure header parsing (``Content-Range``, a backwards ``Range``,
``If-None-Match``, the ``Range`` an upload reports), the request helpers the
handlers share (query arguments, ``Content-Length``, the spooled body's
length) and small response writers (JSON bodies). The handlers
(``http_*.py``) and the app (``http.py``) use them; nothing here keeps state.
"""

from __future__ import annotations

import json
import re
from typing import IO, Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from kraken.core import Digest
from kraken.registry.errors import JSON_CONTENT_TYPE, SizeInvalid

#: Every registry log event keeps the namespace it had when one class served
#: the whole API, so that operators' filters on it go on matching.
LOG_NAMESPACE = "kraken.registry.http.RegistryAPI"

# Inclusive ``<start>-<end>`` without a unit (OCI); ``bytes=``/``bytes `` and a
# trailing ``/<total>`` are tolerated.
_CONTENT_RANGE = re.compile(rb"\s*(?:bytes[= ])?([0-9]{1,18})-([0-9]{1,18})(?:/(?:[0-9]+|\*))?\s*")
_BYTE_RANGE = re.compile(rb"\s*([0-9]+)\s*-\s*([0-9]+)\s*")


def registry_logger(source: object) -> Logger:
    """The logger of a registry handler (see ``LOG_NAMESPACE``)."""
    return Logger(namespace=LOG_NAMESPACE, source=source)


# -- pure header parsing -------------------------------------------------------


def parse_content_range(value: bytes) -> tuple[int, int] | None:
    """``(start, end)`` of a chunk's ``Content-Range`` (inclusive), or None
    when it is malformed or ends before it starts."""
    m = _CONTENT_RANGE.fullmatch(value)
    if m is None or int(m.group(2)) < int(m.group(1)):
        return None
    return int(m.group(1)), int(m.group(2))


def backwards_range(value: bytes) -> bool:
    """Whether a ``Range: bytes=...`` header holds a spec whose last byte
    comes before its first (``bytes=500-0``)."""
    unit, sep, specs = value.partition(b"=")
    if not sep or unit.strip().lower() != b"bytes":
        return False
    for spec in specs.split(b","):
        m = _BYTE_RANGE.fullmatch(spec)
        if m is not None and int(m.group(2)) < int(m.group(1)):
            return True
    return False


def range_value(size: int) -> bytes:
    """``0-<last byte>``, as distribution writes it (``0-0`` when empty)."""
    return b"0-%d" % max(size - 1, 0)


def etag_matches(values: list[bytes], digest: Digest) -> bool:
    """Whether ``If-None-Match`` values name ``digest`` (or ``*``)."""
    wanted = str(digest)
    for value in values:
        for item in value.decode("latin-1").split(","):
            tag = item.strip()
            if tag == "*":
                return True
            if tag.startswith("W/"):
                tag = tag[2:]
            if tag.strip('"') == wanted:
                return True
    return False


# -- requests ------------------------------------------------------------------


def text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("latin-1") if isinstance(value, bytes) else value


def arg(request: IRequest, key: bytes) -> str | None:
    """The first value of query argument ``key``, or None."""
    values: list[bytes] = request.args.get(key) or []
    return values[0].decode("utf-8", "replace") if values else None


def content_length(request: IRequest) -> int | None:
    """The declared ``Content-Length`` (SIZE_INVALID when it is not a number)."""
    raw = request.getHeader(b"content-length")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise SizeInvalid(f"invalid Content-Length {text(raw)!r}") from None
    if value < 0:
        raise SizeInvalid(f"invalid Content-Length {text(raw)!r}")
    return value


def body_length(content: IO[bytes] | None) -> int:
    """Bytes left in the spooled body, found by seeking (nothing is read)."""
    if content is None:
        return 0
    here = content.tell()
    end = content.seek(0, 2)
    content.seek(here)
    return end - here


# -- responses -----------------------------------------------------------------


def json_body(request: IRequest, obj: Any, content_type: bytes = JSON_CONTENT_TYPE) -> bytes:
    """``obj`` as the compact JSON body of the response, with its headers."""
    body = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % len(body))
    return body
