"""The blob endpoint: ``GET``/``HEAD /v2/<name>/blobs/<digest>``.

The source returns a resource that serves the bytes (a ``static.File`` on
the agent, a relay of the origin's answer on the proxy) and handles
``Range`` itself; this handler only refuses what that resource would get
wrong and adds ``Docker-Content-Digest``. A blob the agent is still
downloading is a ``StreamingBlob`` (``kraken.registry.streaming``): its
bytes go out as their pieces are checked, and this handler picks its range
(416 with ``Content-Range: bytes */<size>`` when no byte of it exists). A HEAD is answered from the
source's ``stat_blob`` alone (size, digest, type): no byte is read, which on
the agent means the blob is not downloaded (containerd HEADs every blob
before it GETs it). Blob deletion is not supported.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from kraken.core import Digest
from kraken.registry.errors import BlobUnknown, RangeInvalid
from kraken.registry.messages import backwards_range, text
from kraken.registry.names import parse_digest
from kraken.registry.source import IRegistrySource
from kraken.registry.streaming import StreamingBlob, byte_range


class BlobHandlers:
    """Serves blobs from an ``IRegistrySource``."""

    def __init__(self, source: IRegistrySource) -> None:
        self._source = source

    async def get(self, request: IRequest, name: str, digest_text: str) -> Any:
        digest = parse_digest(digest_text)
        if request.method == b"HEAD":
            return await self._head(request, name, digest)
        resource = await self._source.blob_resource(name, digest)
        if resource is None:
            raise BlobUnknown(detail={"digest": str(digest)})
        raw_range = request.getHeader(b"range")
        try:
            if raw_range is not None and backwards_range(raw_range):
                # static.File ignores such a range and sends everything; the OCI
                # conformance suite (ranges "500-0") expects 416.
                size = await self._source.stat_blob(name, digest)
                raise RangeInvalid(
                    f"unsatisfiable Range {text(raw_range)!r}",
                    status=416,
                    headers={"Content-Range": f"bytes */{size if size is not None else '*'}"},
                )
            if isinstance(resource, StreamingBlob):
                resource.select(byte_range(raw_range, resource.length))
        except BaseException:
            if isinstance(resource, StreamingBlob):
                resource.blob.close()  # it holds the partial file open; only a response closes it otherwise
            raise
        request.setHeader(b"docker-content-digest", str(digest).encode())
        # Klein renders the returned resource after walking request.postpath;
        # it must render as itself, not look up children.
        request.prepath.extend(request.postpath)
        request.postpath = []
        return resource

    async def _head(self, request: IRequest, name: str, digest: Digest) -> bytes:
        size = await self._source.stat_blob(name, digest)
        if size is None:
            raise BlobUnknown(detail={"digest": str(digest)})
        request.setHeader(b"docker-content-digest", str(digest).encode())
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"etag", f'"{digest}"'.encode())
        request.setHeader(b"content-length", b"%d" % size)
        return b""
