"""Content digests: SHA-256 (the default) or SHA-512, and parsing is strict."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import attrs

# Each algorithm we accept, and the length of its lowercase hex.
HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_BY_LENGTH = {n: a for a, n in HEX_LENGTHS.items()}
_HEX = re.compile(r"[0-9a-f]+\Z")


class DigestError(ValueError):
    """A string is not a valid ``sha256:<64 hex>`` or ``sha512:<128 hex>`` digest."""


def _default_algorithm(self: Digest) -> str:
    return _BY_LENGTH.get(len(self.hex) if isinstance(self.hex, str) else 0, "sha256")


@attrs.frozen(order=True)
class Digest:
    """A ``<algorithm>:<hex>`` content address.

    ``hex`` is always lowercase hexadecimal of the algorithm's length (64 for
    sha256, 128 for sha512); anything else is refused at construction, so a
    ``Digest`` in hand is always valid. ``Digest(hex)`` alone takes the
    algorithm from the hex's length, so a bare hex names one blob only.
    """

    hex: str = attrs.field()
    algorithm: str = attrs.field(default=attrs.Factory(_default_algorithm, takes_self=True))

    @algorithm.validator
    def _check(self, attribute: object, value: str) -> None:
        expected = HEX_LENGTHS.get(value)
        if expected is None:
            raise DigestError(f"unsupported digest algorithm {value!r} (only sha256 and sha512)")
        if not isinstance(self.hex, str) or len(self.hex) != expected or not _HEX.match(self.hex):
            raise DigestError(f"not a {value} hex string: {self.hex!r}")

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``sha256:<hex>`` or ``sha512:<hex>``; any other algorithm or form is an error."""
        if not isinstance(text, str):
            raise DigestError(f"digest must be text, not {type(text).__name__}")
        algorithm, sep, hexpart = text.partition(":")
        if not sep:
            raise DigestError(f"digest has no algorithm: {text!r}")
        return cls(hexpart, algorithm)

    @classmethod
    def from_bytes(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of ``data`` (small inputs only: big blobs hash in a worker)."""
        return cls(hashlib.new(algorithm, data).hexdigest(), algorithm)

    def hasher(self) -> Any:
        """A fresh ``hashlib`` object of this digest's algorithm."""
        return hashlib.new(self.algorithm)

    @property
    def raw(self) -> bytes:
        """The digest's bytes (32 for sha256, 64 for sha512)."""
        return bytes.fromhex(self.hex)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def shard(self) -> tuple[str, ...]:
        """The directory levels a content-addressed layout files this under: two levels of the hex for
        sha256 (as always), and a ``sha512`` directory above them for sha512, so the two never mix."""
        levels = (self.hex[:2], self.hex[2:4])
        return levels if self.algorithm == "sha256" else (self.algorithm, *levels)
