"""The content-addressed store: upload area, verified atomic commit, sidecars."""

from kraken.store.cas import CAStore, DigestMismatch
from kraken.store.cleanup import CacheCleanup, Eviction, disk_usage_percent, evict_idle
from kraken.store.downloads import DownloadArea, PartialBlob, PieceCorrupt
from kraken.store.uploads import RangeMismatch, UploadArea, UploadExpiry, UploadTruncated, UploadUnknown
from kraken.store.workers import InlineWorker, ThreadPoolService, ThreadWorker, Worker

__all__ = [
    "CAStore",
    "CacheCleanup",
    "DigestMismatch",
    "DownloadArea",
    "Eviction",
    "InlineWorker",
    "PartialBlob",
    "PieceCorrupt",
    "RangeMismatch",
    "ThreadPoolService",
    "ThreadWorker",
    "UploadArea",
    "UploadExpiry",
    "UploadTruncated",
    "UploadUnknown",
    "Worker",
    "disk_usage_percent",
    "evict_idle",
]
