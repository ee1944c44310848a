"""S3's multipart upload, for blobs above ``upload_part_size``.

``CreateMultipartUpload``, then the parts streamed from the file by the worker (``upload_concurrency`` at a
time, each retried on its own), then ``CompleteMultipartUpload``; if anything fails, the upload is aborted so
S3 keeps no orphan parts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from kraken.backends.base import BackendError
from kraken.backends.s3_xml import complete_multipart_xml, error_code, parse_upload_id
from kraken.net.body import ThreadedFileProducer
from kraken.net.bounded import bounded_map
from kraken.net.client import HTTPStatusError

if TYPE_CHECKING:
    from kraken.backends.s3 import S3Backend

MAX_PARTS = 10_000

log = Logger()


async def upload_multipart(backend: S3Backend, key: str, path: str, size: int, part: int, concurrency: int) -> None:
    """Upload ``size`` bytes of ``path`` as ``key`` in parts of ``part`` bytes, ``concurrency`` at a time."""
    count = -(-size // part)
    if count > MAX_PARTS:
        raise BackendError(f"{size} bytes need {count} parts of {part}; S3 allows {MAX_PARTS}")
    url = backend._object_url(key, {"uploads": ""})

    async def create() -> str:
        response = await backend._send("POST", url, headers={"content-type": "application/octet-stream"}, body=b"")
        if response.code != 200:
            raise await backend._unexpected("POST", url, response)
        return parse_upload_id(await backend._read(response))

    upload_id = await backend._op(f"create multipart upload of {key}", create)
    try:

        async def one(number: int) -> str:
            offset = (number - 1) * part
            return await _upload_part(backend, key, upload_id, number, path, offset, min(part, size - offset))

        etags = await bounded_map(range(1, count + 1), concurrency, one)
        await _complete(backend, key, upload_id, etags, size)
    except BaseException as e:
        await _abort(backend, key, upload_id, e)
        raise


async def _upload_part(
    backend: S3Backend, key: str, upload_id: str, number: int, path: str, offset: int, length: int
) -> str:
    url = backend._object_url(key, {"partNumber": str(number), "uploadId": upload_id})

    async def attempt() -> str:
        body = ThreadedFileProducer(path, offset, length, backend._worker)
        response = await backend._send("PUT", url, data=body, timeout=backend._slow_timeout(length))
        if response.code != 200:
            raise await backend._unexpected("PUT", url, response)
        await backend._drain(response)
        etags = response.headers.getRawHeaders(b"etag")
        if not etags:
            raise BackendError(f"UploadPart {number} of {key} answered without an ETag")
        return str(etags[0].decode("latin-1"))

    return await backend._op(f"upload part {number} of {key}", attempt)


async def _complete(backend: S3Backend, key: str, upload_id: str, etags: list[str], size: int) -> None:
    url = backend._object_url(key, {"uploadId": upload_id})
    body = complete_multipart_xml(etags)

    async def attempt() -> None:
        # S3 may have to assemble for a while; it keeps the connection alive with whitespace.
        response = await backend._send("POST", url, body=body, timeout=backend._slow_timeout(size))
        answer = await backend._read(response)
        if response.code != 200:
            raise HTTPStatusError("POST", url, response.code, answer)
        code = error_code(answer)  # a 200 whose body is an <Error>
        if code:
            raise HTTPStatusError("POST", url, 500 if code in ("InternalError", "SlowDown") else 400, answer)

    await backend._op(f"complete multipart upload of {key}", attempt)


async def _abort(backend: S3Backend, key: str, upload_id: str, why: BaseException) -> None:
    url = backend._object_url(key, {"uploadId": upload_id})

    async def attempt() -> None:
        response = await backend._send("DELETE", url)
        await backend._drain(response)
        if response.code not in (204, 200, 404):
            raise HTTPStatusError("DELETE", url, response.code)

    try:
        await backend._op(f"abort multipart upload of {key}", attempt)
    except Exception as e:
        log.warn(
            "aborting multipart upload {upload_id} of {key} failed ({error}) after: {why}",
            upload_id=upload_id,
            key=key,
            error=str(e),
            why=str(why),
        )
