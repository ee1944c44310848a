"""The content-addressed store: upload area, verified atomic commit, sidecars."""

from kraken.store.cas import CAStore, DigestMismatch
from kraken.store.cleanup import CacheCleanup, Eviction, collect_partials, disk_usage_percent, evict_idle
from kraken.store.downloads import BlobCorrupt, DownloadArea, PartialBlob, PieceCorrupt
from kraken.store.spool import BodyTooLarge
from kraken.store.uploads import RangeMismatch, UploadArea, UploadExpiry, UploadTruncated, UploadUnknown

__all__ = [
    "BlobCorrupt",
    "BodyTooLarge",
    "CAStore",
    "CacheCleanup",
    "DigestMismatch",
    "DownloadArea",
    "Eviction",
    "PartialBlob",
    "PieceCorrupt",
    "RangeMismatch",
    "UploadArea",
    "UploadExpiry",
    "UploadTruncated",
    "UploadUnknown",
    "collect_partials",
    "disk_usage_percent",
    "evict_idle",
]
