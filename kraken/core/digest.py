"""Content digests. Only SHA-256 is accepted, and parsing is strict."""

from __future__ import annotations

import hashlib
import re

import attrs

_HEX = re.compile(r"[0-9a-f]{64}\Z")


class DigestError(ValueError):
    """A string is not a valid ``sha256:<64 lowercase hex>`` digest."""


@attrs.frozen(order=True)
class Digest:
    """A ``sha256:<hex>`` content address.

    ``hex`` is always 64 lowercase hexadecimal characters; anything else is
    refused at construction, so a ``Digest`` in hand is always valid.
    """

    hex: str = attrs.field()

    @hex.validator
    def _check(self, attribute: object, value: str) -> None:
        if not isinstance(value, str) or not _HEX.match(value):
            raise DigestError(f"not a sha256 hex string: {value!r}")

    algorithm = "sha256"

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``sha256:<hex>``; any other algorithm or form is an error."""
        if not isinstance(text, str):
            raise DigestError(f"digest must be text, not {type(text).__name__}")
        algorithm, sep, hexpart = text.partition(":")
        if not sep:
            raise DigestError(f"digest has no algorithm: {text!r}")
        if algorithm != "sha256":
            raise DigestError(f"unsupported digest algorithm {algorithm!r} (only sha256)")
        return cls(hexpart)

    @classmethod
    def from_bytes(cls, data: bytes) -> Digest:
        """The digest of ``data`` (small inputs only: big blobs hash in a worker)."""
        return cls(hashlib.sha256(data).hexdigest())

    def __str__(self) -> str:
        return f"sha256:{self.hex}"

    @property
    def shard(self) -> tuple[str, str]:
        """The two directory levels a content-addressed layout files this under."""
        return self.hex[:2], self.hex[2:4]
