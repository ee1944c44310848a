"""OCI distribution errors, as one exception type rendered once.

Every protocol failure is a ``RegistryError`` carrying the HTTP status, the
OCI error code, a message and an optional ``detail``. The HTTP layer maps it
to a response in a single ``handle_errors`` handler; handlers never set error
statuses themselves. The body is the spec's envelope::

    {"errors": [{"code": "BLOB_UNKNOWN", "message": "...", "detail": ...}]}

One subclass per code gives the default status and message, so handlers
write ``raise BlobUnknown(detail={"digest": str(d)})``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

JSON_CONTENT_TYPE = b"application/json"


class RegistryError(Exception):
    """A failure the client is told about with an OCI error body.

    ``headers`` are extra response headers (e.g. ``Range`` on a 416, so the
    client learns where the upload stands).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers: dict[str, str] = dict(headers or {})

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}

    def body(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True).encode("utf-8")


class _Coded(RegistryError):
    """Base of the per-code subclasses: status and message default per code."""

    CODE: ClassVar[str]
    STATUS: ClassVar[int]
    MESSAGE: ClassVar[str]

    def __init__(
        self,
        message: str | None = None,
        detail: Any = None,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            self.STATUS if status is None else status,
            self.CODE,
            self.MESSAGE if message is None else message,
            detail,
            headers=headers,
        )


class BlobUnknown(_Coded):
    CODE, STATUS, MESSAGE = "BLOB_UNKNOWN", 404, "blob unknown to registry"


class BlobUploadInvalid(_Coded):
    CODE, STATUS, MESSAGE = "BLOB_UPLOAD_INVALID", 400, "blob upload invalid"


class BlobUploadUnknown(_Coded):
    CODE, STATUS, MESSAGE = "BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry"


class DigestInvalid(_Coded):
    CODE, STATUS, MESSAGE = "DIGEST_INVALID", 400, "provided digest did not match uploaded content"


class ManifestBlobUnknown(_Coded):
    CODE, STATUS, MESSAGE = "MANIFEST_BLOB_UNKNOWN", 400, "manifest references a manifest or blob unknown to registry"


class ManifestInvalid(_Coded):
    CODE, STATUS, MESSAGE = "MANIFEST_INVALID", 400, "manifest invalid"


class ManifestUnknown(_Coded):
    CODE, STATUS, MESSAGE = "MANIFEST_UNKNOWN", 404, "manifest unknown to registry"


class NameInvalid(_Coded):
    CODE, STATUS, MESSAGE = "NAME_INVALID", 400, "invalid repository name"


class NameUnknown(_Coded):
    CODE, STATUS, MESSAGE = "NAME_UNKNOWN", 404, "repository name not known to registry"


class SizeInvalid(_Coded):
    CODE, STATUS, MESSAGE = "SIZE_INVALID", 400, "provided length did not match content length"


class Unsupported(_Coded):
    CODE, STATUS, MESSAGE = "UNSUPPORTED", 405, "the operation is unsupported"


class RangeInvalid(_Coded):
    CODE, STATUS, MESSAGE = "RANGE_INVALID", 416, "invalid content range"


class PaginationNumberInvalid(_Coded):
    CODE, STATUS, MESSAGE = "PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested"


class TagInvalid(_Coded):
    CODE, STATUS, MESSAGE = "TAG_INVALID", 400, "manifest tag did not match URI"


class Denied(_Coded):
    CODE, STATUS, MESSAGE = "DENIED", 403, "requested access to the resource is denied"


class Unauthorized(_Coded):
    CODE, STATUS, MESSAGE = "UNAUTHORIZED", 401, "authentication required"


class TooManyRequests(_Coded):
    CODE, STATUS, MESSAGE = "TOOMANYREQUESTS", 429, "too many requests"


class Unknown(_Coded):
    CODE, STATUS, MESSAGE = "UNKNOWN", 500, "unknown error"


class InsufficientStorage(_Coded):
    """The registry is out of space (a full disk or quota, ENOSPC/EDQUOT).

    507 Insufficient Storage, code ``UNKNOWN``, a message that starts "no
    space left on device". Why these:

    - The status is what most clients show: skopeo, podman and buildah
      (containers/image) parse the error body of 4xx answers only and report
      a 5xx by its status line: "received unexpected HTTP status: 507
      Insufficient Storage Space" (twisted.web's reason phrase); containerd
      reports "unexpected status from PUT request to ...: 507 ...".
      With 503 they would say "Service Unavailable", which hides the cause.
    - 507 is not retried: containerd 2.x retries 500, 503 and 504 once
      (1.6 retries no 5xx), the distribution API counts 502-504 as
      retryable and other 5xx as final, and containers/common's retry
      (skopeo ``--retry-times``) does not retry an unexpected status. A full
      disk does not empty itself within a retry's backoff, and each retry
      of a push sends the whole body again: 503 would invite exactly that.
    - The OCI spec has no code for it and tells clients to treat codes they
      do not know as ``UNKNOWN``; distribution answers storage failures with
      ``UNKNOWN`` too. So the code is ``UNKNOWN``, and the message (and
      ``detail.reason``, the errno name) says what happened.
    """

    CODE, STATUS, MESSAGE = "UNKNOWN", 507, "no space left on device: the registry cannot store this now"


__all__ = [
    "JSON_CONTENT_TYPE",
    "BlobUnknown",
    "BlobUploadInvalid",
    "BlobUploadUnknown",
    "Denied",
    "DigestInvalid",
    "InsufficientStorage",
    "ManifestBlobUnknown",
    "ManifestInvalid",
    "ManifestUnknown",
    "NameInvalid",
    "NameUnknown",
    "PaginationNumberInvalid",
    "RangeInvalid",
    "RegistryError",
    "SizeInvalid",
    "TagInvalid",
    "TooManyRequests",
    "Unauthorized",
    "Unknown",
    "Unsupported",
]
