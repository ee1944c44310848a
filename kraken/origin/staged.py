"""An origin's uploads that start before their digest is known (``kraken.proxy.stage`` streams a client's
upload to one as it arrives): the client side of ``/namespace/<ns>/staged-uploads`` (``kraken.origin.http``),
one attempt per call. ``OriginClient`` has these methods."""

from __future__ import annotations

from urllib.parse import quote

from twisted.web.iweb import IBodyProducer, IResponse

from kraken.core import Digest
from kraken.net import HTTPStatusError
from kraken.net.service import ServiceClient, name_path

#: The size of a staged upload after a chunk (the answer to ``PATCH .../staged-uploads/<uid>``).
UPLOAD_SIZE_HEADER = b"Kraken-Upload-Size"


class DigestRefused(HTTPStatusError):
    """The origin refused to commit an upload (400 to its ``PUT``): the bytes are not the blob they were
    named for. The origin deleted the upload; nothing was stored."""


class StagedUploads(ServiceClient):
    """The staged-upload calls of one origin's client (``_base``), and the answers of upload steps that every
    upload shares (``_upload_id``, ``_committed``, ``_held``)."""

    def _staged_url(self, namespace: str, uid: str | None = None) -> str:
        url = f"{self._base}/namespace/{name_path(namespace)}/staged-uploads"
        return url if uid is None else f"{url}/{quote(uid, safe='')}"

    async def start_staged(self, namespace: str) -> str:
        """A new upload on this origin whose digest is named at ``commit_staged``: its id."""
        url = self._staged_url(namespace)
        return await self._upload_id(url, await self._request("POST", url))

    async def _upload_id(self, url: str, response: IResponse) -> str:
        """The id of the upload that a ``POST`` to ``url`` started (its ``Location``), the response drained."""
        if response.code != 200:
            raise await self._unexpected("POST", url, response)
        await self._drain(response)
        locations = response.headers.getRawHeaders(b"location")
        if not locations:
            raise HTTPStatusError("POST", url, response.code, b"no Location header")
        return locations[0].decode("ascii").strip()

    async def append_staged(self, namespace: str, uid: str, offset: int, body: IBodyProducer) -> int:
        """Append what ``body`` produces (of any length, for as long as it takes: no timeout) at ``offset`` of
        staged upload ``uid``: the upload's size now."""
        url = self._staged_url(namespace, uid)
        headers = {b"Content-Range": [f"{offset}-".encode()]}
        response = await self._request("PATCH", url, data=body, headers=headers, timeout=None)
        if response.code != 204:
            raise await self._unexpected("PATCH", url, response)
        await self._drain(response)
        sizes = response.headers.getRawHeaders(UPLOAD_SIZE_HEADER) or []
        try:
            return int(sizes[0])
        except (IndexError, ValueError):
            raise HTTPStatusError("PATCH", url, response.code, b"no valid Kraken-Upload-Size header") from None

    async def commit_staged(self, namespace: str, digest: Digest, uid: str, size: int) -> bool:
        """Store staged upload ``uid`` as blob ``digest`` (copied to the other replicas, as ``upload``): True;
        False when this origin is not in the blob's placement (421; the upload is gone). ``DigestRefused``
        when the bytes are not ``digest``."""
        url = f"{self._base}/namespace/{name_path(namespace)}/blobs/{digest}/staged-uploads/{quote(uid, safe='')}"
        response = await self._request("PUT", url, timeout=self._slow_timeout(size))
        if response.code == 421:
            await self._drain(response)
            return False
        await self._committed(url, response)
        return True

    async def _committed(self, url: str, response: IResponse) -> bool:
        """The answer to an upload's commit (``PUT``), drained: ``DigestRefused`` on 400, else as ``_held``."""
        if response.code == 400:
            refused = await self._unexpected("PUT", url, response)
            raise DigestRefused("PUT", url, 400, refused.body)
        return await self._held("PUT", url, response)

    async def _held(self, method: str, url: str, response: IResponse) -> bool:
        """An upload step's answer, drained: True on 409 (the origin holds the
        blob already), False on 2xx; anything else raises ``HTTPStatusError``."""
        if response.code != 409 and not 200 <= response.code < 300:
            raise await self._unexpected(method, url, response)
        await self._drain(response)
        return response.code == 409

    async def drop_staged(self, namespace: str, uid: str) -> None:
        """Delete staged upload ``uid`` (it is of no use any more)."""
        url = self._staged_url(namespace, uid)
        response = await self._request("DELETE", url)
        if response.code not in (204, 404):
            raise await self._unexpected("DELETE", url, response)
        await self._drain(response)
