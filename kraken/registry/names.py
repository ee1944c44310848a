"""Validation of what clients put in registry URLs: repository names, tags,
references (tag or digest) and the ``n``/``last`` pagination parameters.

The predicates (``is_valid_name``, ``is_valid_tag``) are pure; the ``check_``
and ``parse_`` functions raise the matching ``RegistryError`` so the HTTP
layer can call them and let the error handler answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from kraken.core import Digest, DigestError
from kraken.core.digest import HEX_LENGTHS
from kraken.registry.errors import DigestInvalid, NameInvalid, PaginationNumberInvalid, TagInvalid

MAX_NAME_LENGTH = 255

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")

#: Digits only: no sign, no spaces, no underscores (``int()`` accepts all three).
_DECIMAL = re.compile(r"[0-9]+")


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is a repository name the spec allows (at most 255 chars)."""
    return isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and NAME_RE.fullmatch(name) is not None


def is_valid_tag(tag: str) -> bool:
    return isinstance(tag, str) and TAG_RE.fullmatch(tag) is not None


def check_name(name: str) -> str:
    """``name`` unchanged, or ``NameInvalid``."""
    if not is_valid_name(name):
        raise NameInvalid(detail={"name": name})
    return name


def check_tag(tag: str) -> str:
    if not is_valid_tag(tag):
        raise TagInvalid("invalid tag", detail={"tag": tag})
    return tag


def parse_digest(text: str) -> Digest:
    """A strict ``sha256:<64 lowercase hex>`` or ``sha512:<128 lowercase hex>`` digest, or ``DigestInvalid``."""
    try:
        return Digest.parse(text)
    except DigestError as e:
        raise DigestInvalid(f"invalid digest: {e}", detail={"digest": text}) from None


def check_digest_algorithm(algorithm: str | None) -> None:
    """``?digest-algorithm=`` of an upload's POST (end-4c): absent, or one we verify; else ``DigestInvalid``.
    (Nothing else depends on it: the final ``?digest=`` says which algorithm checks the upload.)"""
    if algorithm is not None and algorithm not in HEX_LENGTHS:
        raise DigestInvalid(
            f"unsupported digest algorithm {algorithm!r} (sha256 or sha512)", detail={"digest-algorithm": algorithm}
        )


def parse_reference(reference: str) -> Digest | str:
    """A manifest reference: a ``Digest`` if it has an algorithm prefix
    (tags cannot contain ``:``), else a validated tag."""
    if ":" in reference:
        return parse_digest(reference)
    return check_tag(reference)


def parse_pagination(
    args: Mapping[bytes, Sequence[bytes]], max_n: int, *, catalog: bool = False
) -> tuple[int | None, str | None]:
    """``(n, last)`` from the query arguments.

    ``n`` is None when absent; otherwise a non-negative decimal integer,
    capped at ``max_n`` (a larger request is not an error: the client follows
    ``Link`` for the rest). Anything else is ``PaginationNumberInvalid``.
    ``last`` is None when absent or empty; otherwise it must be what the
    listing lists (a tag, or with ``catalog`` a repository name), else
    ``TagInvalid`` / ``NameInvalid``: no listing can continue after it.
    """
    n: int | None = None
    raw_n = args.get(b"n")
    if raw_n:
        text = raw_n[0].decode("ascii", "replace")
        if not _DECIMAL.fullmatch(text):
            raise PaginationNumberInvalid(detail={"n": text})
        # Compare lengths first: int() of a very long digit string is slow or refused.
        digits = text.lstrip("0") or "0"
        n = max_n if len(digits) > 18 else min(int(digits), max_n)
    last: str | None = None
    raw_last = args.get(b"last")
    if raw_last and raw_last[0]:
        last = raw_last[0].decode("utf-8", "replace")
        if catalog and not is_valid_name(last):
            raise NameInvalid("last is not a repository name", detail={"last": last[:MAX_NAME_LENGTH]})
        if not catalog and not is_valid_tag(last):
            raise TagInvalid("last is not a tag", detail={"last": last[:MAX_NAME_LENGTH]})
    return n, last
