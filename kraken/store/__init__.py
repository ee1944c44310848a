"""The content-addressed store: upload area, verified atomic commit, sidecars."""

from kraken.store.cas import CAStore, DigestMismatch
from kraken.store.downloads import DownloadArea, PartialBlob, PieceCorrupt
from kraken.store.uploads import RangeMismatch, UploadArea, UploadExpiry, UploadTruncated, UploadUnknown
from kraken.store.workers import InlineWorker, ThreadPoolService, ThreadWorker, Worker

__all__ = [
    "CAStore",
    "DigestMismatch",
    "DownloadArea",
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
]
