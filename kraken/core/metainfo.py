"""MetaInfo: how a blob is cut into pieces, and the SHA-256 of every piece.

The info hash names a torrent on the wire. It is the SHA-256 of a canonical
binary encoding of the metainfo (see ``MetaInfo.canonical``), so two origins
that cut a blob with the same piece length always agree on it.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import struct
from collections.abc import Mapping
from typing import Any

import attrs

from kraken.core.digest import Digest, DigestError

_CANONICAL_MAGIC = b"KRAKEN-METAINFO-1\n"
_CANONICAL_HEAD = struct.Struct(">32sQQ")
# A sha512 blob's head carries its 64-byte digest after a marker of the algorithm; a sha256 blob's head is
# unchanged, so its info hash is the one it always had.
_CANONICAL_SHA512 = b"sha512\n"
_CANONICAL_HEAD_SHA512 = struct.Struct(">64sQQ")
FORMAT_VERSION = 1


class MetaInfoError(ValueError):
    """A metainfo document is malformed or inconsistent."""


@attrs.frozen
class PieceLengthRule:
    """Chooses a piece length from a blob's size.

    ``steps`` is a sorted tuple of ``(min_blob_size, piece_length)``; the step
    with the largest ``min_blob_size`` not above the blob's size wins. The first
    step must start at 0 so every size has a piece length.
    """

    steps: tuple[tuple[int, int], ...] = attrs.field()

    @steps.validator
    def _check(self, attribute: object, steps: tuple[tuple[int, int], ...]) -> None:
        if not steps or steps[0][0] != 0:
            raise ValueError("the piece length rule must have a step for size 0")
        sizes = [s for s, _ in steps]
        if sizes != sorted(set(sizes)):
            raise ValueError("piece length rule steps must be sorted and distinct")
        if any(length <= 0 for _, length in steps):
            raise ValueError("piece lengths must be positive")

    @classmethod
    def from_mapping(cls, mapping: Mapping[int, int]) -> PieceLengthRule:
        return cls(tuple(sorted((int(k), int(v)) for k, v in mapping.items())))

    @classmethod
    def default(cls) -> PieceLengthRule:
        """1 MiB pieces below 2 GiB, then 4, 16 and 32 MiB: at most about 2,000 pieces up to 32 GiB.

        Smaller than Kraken's 4 MiB for all sizes, measured: in bench/swarm.py (50 capped agents, 64 MiB blob)
        1 MiB pieces cut the slowest agent from about 1.5x to 1.3x of the ideal time and the agents' peak memory
        by a quarter; 512 KiB pieces were slower again (more per-piece work)."""
        mib, gib = 1 << 20, 1 << 30
        return cls(((0, mib), (2 * gib, 4 * mib), (8 * gib, 16 * mib), (32 * gib, 32 * mib)))

    def piece_length(self, blob_size: int) -> int:
        i = bisect.bisect_right([s for s, _ in self.steps], blob_size) - 1
        return self.steps[i][1]


class PieceHasher:
    """Incremental digest of a whole blob (SHA-256, or the ``algorithm`` given) and SHA-256 of each of its pieces.

    Feed the blob in order with ``update``; chunks need not align with pieces.
    Pure computation: callers run it in a worker thread for big blobs.
    """

    def __init__(self, piece_length: int, algorithm: str = "sha256") -> None:
        if piece_length <= 0:
            raise ValueError("piece length must be positive")
        self._piece_length = piece_length
        self._algorithm = algorithm
        self._whole = hashlib.new(algorithm)
        self._piece = hashlib.sha256()
        self._in_piece = 0
        self._sums: list[bytes] = []
        self._length = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self._whole.update(view)
        self._length += len(view)
        while view:
            take = min(len(view), self._piece_length - self._in_piece)
            self._piece.update(view[:take])
            self._in_piece += take
            view = view[take:]
            if self._in_piece == self._piece_length:
                self._sums.append(self._piece.digest())
                self._piece = hashlib.sha256()
                self._in_piece = 0

    def sha256(self) -> Any:
        """A copy of the running digest of the whole (SHA-256 unless another ``algorithm`` was given), fed so
        far (a ``hashlib`` object, to go on with)."""
        return self._whole.copy()

    def finish(self) -> MetaInfo:
        sums = list(self._sums)
        if self._in_piece or not sums:
            sums.append(self._piece.digest())
        return MetaInfo(
            digest=Digest(self._whole.hexdigest(), self._algorithm),
            length=self._length,
            piece_length=self._piece_length,
            piece_sums=tuple(sums),
        )


def _piece_count(length: int, piece_length: int) -> int:
    return max(1, -(-length // piece_length))


@attrs.frozen
class MetaInfo:
    """The piece layout of one blob. An empty blob has one empty piece."""

    digest: Digest
    length: int
    piece_length: int
    piece_sums: tuple[bytes, ...]

    def __attrs_post_init__(self) -> None:
        if self.length < 0 or self.piece_length <= 0:
            raise MetaInfoError("length must be >= 0 and piece length > 0")
        expected = _piece_count(self.length, self.piece_length)
        if len(self.piece_sums) != expected:
            raise MetaInfoError(
                f"{self.length} bytes in pieces of {self.piece_length} need {expected} sums, got {len(self.piece_sums)}"
            )
        if any(len(s) != 32 for s in self.piece_sums):
            raise MetaInfoError("every piece sum must be 32 bytes")

    @classmethod
    def from_bytes(cls, data: bytes, piece_length: int, algorithm: str = "sha256") -> MetaInfo:
        hasher = PieceHasher(piece_length, algorithm)
        hasher.update(data)
        return hasher.finish()

    @property
    def num_pieces(self) -> int:
        return len(self.piece_sums)

    def piece_size(self, index: int) -> int:
        if not 0 <= index < self.num_pieces:
            raise IndexError(f"piece {index} outside 0..{self.num_pieces - 1}")
        if index < self.num_pieces - 1:
            return self.piece_length
        return self.length - self.piece_length * (self.num_pieces - 1)

    def piece_offset(self, index: int) -> int:
        self.piece_size(index)
        return index * self.piece_length

    def piece_ok(self, index: int, data: bytes | memoryview) -> bool:
        return len(data) == self.piece_size(index) and hashlib.sha256(data).digest() == self.piece_sums[index]

    def canonical(self) -> bytes:
        """The exact bytes the info hash covers."""
        if self.digest.algorithm == "sha256":
            head = _CANONICAL_HEAD.pack(self.digest.raw, self.length, self.piece_length)
        else:
            head = _CANONICAL_SHA512 + _CANONICAL_HEAD_SHA512.pack(self.digest.raw, self.length, self.piece_length)
        return _CANONICAL_MAGIC + head + b"".join(self.piece_sums)

    @property
    def info_hash(self) -> str:
        """Hex SHA-256 of ``canonical()``."""
        return hashlib.sha256(self.canonical()).hexdigest()

    def to_json(self) -> bytes:
        doc = {
            "version": FORMAT_VERSION,
            "digest": str(self.digest),
            "length": self.length,
            "piece_length": self.piece_length,
            "piece_sums": [s.hex() for s in self.piece_sums],
            "info_hash": self.info_hash,
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> MetaInfo:
        try:
            doc: Any = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise MetaInfoError(f"metainfo is not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise MetaInfoError("metainfo must be a JSON object")
        if doc.get("version") != FORMAT_VERSION:
            raise MetaInfoError(f"unsupported metainfo version {doc.get('version')!r}")
        try:
            sums = doc["piece_sums"]
            if not isinstance(sums, list) or not all(isinstance(s, str) for s in sums):
                raise MetaInfoError("piece_sums must be a list of hex strings")
            length, piece_length = doc["length"], doc["piece_length"]
            if not isinstance(length, int) or not isinstance(piece_length, int) or isinstance(length, bool):
                raise MetaInfoError("length and piece_length must be integers")
            info = cls(
                digest=Digest.parse(doc["digest"]),
                length=length,
                piece_length=piece_length,
                piece_sums=tuple(_unhex(s) for s in sums),
            )
        except KeyError as e:
            raise MetaInfoError(f"metainfo lacks {e.args[0]!r}") from None
        except DigestError as e:
            raise MetaInfoError(str(e)) from None
        claimed = doc.get("info_hash")
        if claimed is not None and claimed != info.info_hash:
            raise MetaInfoError("info_hash does not match the metainfo's content")
        return info


def _unhex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise MetaInfoError(f"piece sum is not hex: {text[:80]!r}") from None
