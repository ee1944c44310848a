"""Pure domain types: no reactor, no I/O, nothing else of ours imported."""

from kraken.core.bitfield import Bitfield
from kraken.core.digest import Digest, DigestError
from kraken.core.metainfo import MetaInfo, MetaInfoError, PieceHasher, PieceLengthRule

__all__ = [
    "Bitfield",
    "Digest",
    "DigestError",
    "MetaInfo",
    "MetaInfoError",
    "PieceHasher",
    "PieceLengthRule",
]
