"""A fixed-size set of piece indexes, with a compact byte encoding."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class Bitfield:
    """``n`` bits; bit ``i`` is the most significant bit of byte ``i // 8``
    counted from the left (BitTorrent's order), so the encoding is
    ``ceil(n / 8)`` bytes with spare low bits of the last byte zero."""

    __slots__ = ("_bits", "_count", "_length")

    def __init__(self, length: int, ones: Iterable[int] = ()) -> None:
        if length < 0:
            raise ValueError("bitfield length must not be negative")
        self._length = length
        self._bits = bytearray((length + 7) // 8)
        self._count = 0
        for i in ones:
            self.set(i)

    @classmethod
    def full(cls, length: int) -> Bitfield:
        return cls(length, range(length))

    @classmethod
    def from_bytes(cls, length: int, data: bytes) -> Bitfield:
        """Decode; the byte count must match and the spare bits must be zero."""
        if len(data) != (length + 7) // 8:
            raise ValueError(f"bitfield of {length} bits needs {(length + 7) // 8} bytes, got {len(data)}")
        spare = len(data) * 8 - length
        if spare and data[-1] & ((1 << spare) - 1):
            raise ValueError("bitfield has bits set past its length")
        field = cls(length)
        field._bits[:] = data
        field._count = sum(bin(b).count("1") for b in data)
        return field

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

    def __len__(self) -> int:
        return self._length

    def _check(self, i: int) -> None:
        if not 0 <= i < self._length:
            raise IndexError(f"piece {i} outside 0..{self._length - 1}")

    def __getitem__(self, i: int) -> bool:
        if not 0 <= i < self._length:  # _check, inlined: the dispatcher asks millions of times per blob
            raise IndexError(f"piece {i} outside 0..{self._length - 1}")
        return bool(self._bits[i >> 3] & (0x80 >> (i & 7)))

    def set(self, i: int) -> None:
        if not self[i]:
            self._bits[i >> 3] |= 0x80 >> (i & 7)
            self._count += 1

    def clear(self, i: int) -> None:
        if self[i]:
            self._bits[i >> 3] &= ~(0x80 >> (i & 7)) & 0xFF
            self._count -= 1

    def count(self) -> int:
        return self._count

    def complete(self) -> bool:
        return self._count == self._length

    def ones(self) -> Iterator[int]:
        return (i for i in range(self._length) if self[i])

    def zeros(self) -> Iterator[int]:
        return (i for i in range(self._length) if not self[i])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Bitfield):
            return NotImplemented
        return self._length == other._length and self._bits == other._bits

    def __hash__(self) -> int:
        return hash((self._length, bytes(self._bits)))

    def __repr__(self) -> str:
        return f"<Bitfield {self._count}/{self._length}>"
