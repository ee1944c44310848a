"""A backend on HDFS through the WebHDFS REST API (Kraken's ``hdfs`` backend).

What this relies on, from Apache Hadoop's "WebHDFS REST API" page:

- Every request is ``http://<namenode>/webhdfs/v1/<absolute path>?op=<OP>``;
  with simple (pseudo) authentication the user is the ``user.name`` query
  parameter.
- ``GET ?op=GETFILESTATUS`` answers 200 with ``{"FileStatus": {"length": ...,
  "type": "FILE"|"DIRECTORY", ...}}``.
- ``GET ?op=LISTSTATUS`` on a directory answers 200 with
  ``{"FileStatuses": {"FileStatus": [...]}}``, one entry per child, named by
  its ``pathSuffix`` (the directory's direct children only).
- ``GET ?op=OPEN`` answers ``307 Temporary Redirect`` whose ``Location`` is a
  datanode URL; a ``GET`` there answers 200 with the bytes.
- ``PUT ?op=CREATE&overwrite=true`` sent to the namenode *without* data
  answers 307 with the datanode's ``Location``; the data is then ``PUT`` to
  that URL, which answers ``201 Created``. CREATE makes missing parents.
- ``PUT ?op=MKDIRS`` answers ``{"boolean": true}``; ``PUT ?op=RENAME&destination=<path>``
  answers ``{"boolean": ...}`` (false, not an error, when the source is
  missing or the destination exists: HDFS's rename does not overwrite);
  ``DELETE ?op=DELETE`` answers ``{"boolean": ...}``.
- Errors are JSON ``{"RemoteException": {"exception": ..., "javaClassName": ...,
  "message": ...}}``: ``FileNotFoundException`` is 404, other ``IOException``\\ s
  403 (including ``StandbyException`` from a standby namenode), bad arguments
  400, anything else 500.

Behaviour:

- ``namenodes`` are tried in order for each request: a network error, a 5xx
  or a ``StandbyException`` moves on to the next; when all fail the whole
  operation is retried (``http_client.retries``), then ``BackendUnavailable``.
- ``stat``: GETFILESTATUS; 404 or a non-file -> ``BlobNotFound``.
- ``download``: OPEN, following the 307 to the datanode (a 200 straight from
  the namenode, as an HttpFS gateway answers, is accepted too); the body is
  streamed to a temporary file by the worker and renamed over the target.
- ``upload``: CREATE a temporary file ``<root>/<upload_directory>/<uuid>``
  (namenode without data, then the body to the datanode, 201 expected),
  MKDIRS the blob's directory, then RENAME the temporary file into place, so
  readers never see a partial blob. If RENAME answers false because a blob is
  already there, it is DELETEd and the RENAME repeated: between the two, the
  name is briefly missing (never partial). A failed upload DELETEs its
  temporary file (best effort).
- ``list``: LISTSTATUS of the directory the pather maps the prefix to, then of
  the subdirectories whose paths can still hold a match (the sharded blob layout
  needs three levels); directories are walked one at a time (Kraken walks 16
  at once) and every call walks again, so listing a large sharded store is
  slow. The upload directory is skipped. Pages are cut by our own
  continuation token: the last name of the previous page.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import attrs
from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IResponse
from zope.interface import implementer

from kraken.backends.base import (
    DEFAULT_LIST_LIMIT,
    BackendError,
    BackendUnavailable,
    BlobInfo,
    BlobNotFound,
    IBackend,
    InvalidName,
    ListPage,
)
from kraken.backends.names import PATHERS, Pather, make_pather
from kraken.backends.remote import RemoteBackend, stream_to_file
from kraken.cluster.failover import first_answer
from kraken.net.body import ThreadedFileProducer
from kraken.net.client import HTTPClientConfig, HTTPStatusError
from kraken.net.retry import NETWORK_ERRORS
from kraken.net.service import ERROR_BODY
from kraken.workers import Worker

T = TypeVar("T")
log = Logger()

WEBHDFS = "/webhdfs/v1"


def _check_namenodes(instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("namenodes must list at least one host:port")
    for hostport in value:
        host, colon, port = hostport.rpartition(":")
        if not colon or not host or not port.isdigit() or "/" in hostport:
            raise ValueError(f"a namenode is host:port, not {hostport!r}")


def _check_root(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.startswith("/"):
        raise ValueError(f"{attribute.name} must be an absolute HDFS path, not {value!r}")


def _check_upload_directory(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value or value.startswith("/") or any(p in ("", ".", "..") for p in value.strip("/").split("/")):
        raise ValueError(f"{attribute.name} must be a relative directory under root_directory, not {value!r}")


def _known_pather(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in PATHERS:
        raise ValueError(f"unknown name_path {value!r} (known: {', '.join(sorted(PATHERS))})")


@attrs.frozen
class HDFSConfig:
    """YAML: ``backends: [{namespace: ..., hdfs: {namenodes: ["nn1:50070", "nn2:50070"], username: kraken}}]``."""

    # host:port of each namenode's HTTP server, tried in order.
    namenodes: tuple[str, ...] = attrs.field(converter=tuple, validator=_check_namenodes)
    # Sent as user.name (simple authentication); "" sends none.
    username: str = ""
    root_directory: str = attrs.field(default="/infra/dockerRegistry/", validator=_check_root)
    # Temporary files of uploads, under root_directory.
    upload_directory: str = attrs.field(default="_uploads", validator=_check_upload_directory)
    name_path: str = attrs.field(default="identity", validator=_known_pather)
    http_client: HTTPClientConfig = HTTPClientConfig()

    def upload_dir(self) -> str:
        return f"{self.root_directory.rstrip('/')}/{self.upload_directory.strip('/')}"


class _Failover(Exception):
    """This namenode cannot serve the request (standby): try the next."""


def _remote_exception(body: bytes) -> str:
    """The ``exception`` of a RemoteException body, or ""."""
    try:
        doc = json.loads(body)
        return str(doc["RemoteException"]["exception"])
    except (ValueError, KeyError, TypeError):
        return ""


def _should_fail_over(e: Exception) -> bool:
    if isinstance(e, _Failover) or isinstance(e, NETWORK_ERRORS):
        return True
    return isinstance(e, HTTPStatusError) and e.code >= 500


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise BackendError(f"{what}: the answer is not JSON: {body[:200]!r}") from None


def _boolean(body: bytes, what: str) -> bool:
    doc = _json(body, what)
    if not isinstance(doc, dict) or not isinstance(doc.get("boolean"), bool):
        raise BackendError(f"{what}: expected {{'boolean': ...}}, got {body[:200]!r}")
    return bool(doc["boolean"])


def _parent(path: str) -> str:
    head = path.rstrip("/").rpartition("/")[0]
    return head or "/"


@implementer(IBackend)
@attrs.frozen
class HDFSBackend(RemoteBackend):
    """``IBackend`` over WebHDFS. Build it with ``HDFSBackend.create``."""

    _hdfs: HDFSConfig
    _worker: Worker
    pather: Pather

    @classmethod
    def create(cls, config: HDFSConfig, *, http: HTTPClient, clock: IReactorTime, worker: Worker) -> HDFSBackend:
        pather = make_pather(config.name_path, config.root_directory)
        base = f"http://{config.namenodes[0]}"
        return cls(http, base, clock, config.http_client, hdfs=config, worker=worker, pather=pather)

    # -- plumbing --

    def _url(self, namenode: str, path: str, op: str, **params: str) -> str:
        query = {"op": op, **params}
        if self._hdfs.username:
            query["user.name"] = self._hdfs.username
        return f"http://{namenode}{WEBHDFS}{quote(path, safe='/')}?{urlencode(query)}"

    async def _op(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        try:
            return await super()._op(what, attempt)
        except _Failover as e:
            raise BackendUnavailable(f"{what}: {e}") from e

    async def _namenode(
        self,
        method: str,
        path: str,
        op: str,
        handle: Callable[[str, IResponse], Awaitable[T]],
        params: dict[str, str] | None = None,
    ) -> T:
        """``handle(url, response)`` of the first namenode that answers; the
        next one on a network error, a 5xx or a standby answer
        (``kraken.cluster.failover.first_answer``)."""

        async def ask(namenode: str) -> T:
            url = self._url(namenode, path, op, **(params or {}))
            response = await self._request(method, url)
            return await handle(url, response)

        def failed(namenode: str, error: Exception, last: bool) -> None:
            log.debug("namenode {namenode} failed {op}: {error}", namenode=namenode, op=op, error=str(error))

        return await first_answer(self._hdfs.namenodes, ask, fails_over=_should_fail_over, on_fail=failed)

    async def _expect(self, method: str, url: str, response: IResponse, codes: frozenset[int]) -> bytes:
        """The (small) body of an answer whose status is one of ``codes``;
        otherwise ``_Failover`` for a standby namenode or ``HTTPStatusError``."""
        body = await self._read(response, None if response.code in codes else ERROR_BODY)
        if response.code in codes:
            return body
        if _remote_exception(body) == "StandbyException":
            raise _Failover(f"{method} {url}: standby namenode")
        raise HTTPStatusError(method, url, response.code, body)

    def _location(self, method: str, url: str, response: IResponse) -> str:
        locations = response.headers.getRawHeaders(b"location")
        if not locations:
            raise BackendError(f"{method} {url}: a 307 without Location")
        return str(locations[0].decode("latin-1"))

    async def _boolean_op(self, method: str, path: str, op: str, params: dict[str, str] | None = None) -> bool:
        async def handle(url: str, response: IResponse) -> bool:
            return _boolean(await self._expect(method, url, response, frozenset({200})), f"{op} {path}")

        return await self._op(f"{op} {path}", lambda: self._namenode(method, path, op, handle, params))

    # -- stat --

    async def _status(self, path: str) -> dict[str, Any] | None:
        """The FileStatus of ``path``, None if there is none."""

        async def handle(url: str, response: IResponse) -> dict[str, Any] | None:
            body = await self._expect("GET", url, response, frozenset({200, 404}))
            if response.code == 404:
                return None
            status = _json(body, f"GETFILESTATUS {path}").get("FileStatus")
            if not isinstance(status, dict):
                raise BackendError(f"GETFILESTATUS {path}: no FileStatus in {body[:200]!r}")
            return status

        return await self._op(f"getfilestatus {path}", lambda: self._namenode("GET", path, "GETFILESTATUS", handle))

    async def stat(self, namespace: str, name: str) -> BlobInfo:
        path = self.pather.path(name)
        status = await self._status(path)
        if status is None or status.get("type") != "FILE":
            raise BlobNotFound(namespace, name)
        length = status.get("length")
        if not isinstance(length, int) or length < 0:
            raise BackendError(f"GETFILESTATUS {path}: no usable length in {status!r}")
        return BlobInfo(size=length)

    # -- download --

    async def download(self, namespace: str, name: str, path: str) -> None:
        hdfs_path = self.pather.path(name)

        async def handle(url: str, response: IResponse) -> IResponse:
            if response.code == 307:
                location = self._location("GET", url, response)
                await self._drain(response)
                response = await self._request("GET", location)
                url = location
            if response.code == 404:
                await self._drain(response)
                raise BlobNotFound(namespace, name)
            if response.code != 200:
                await self._expect("GET", url, response, frozenset())
            return response

        async def attempt() -> int:
            response = await self._namenode("GET", hdfs_path, "OPEN", handle)
            return await stream_to_file(
                response,
                path,
                worker=self._worker,
                clock=self._clock,
                timeout=self._config.timeout,
                prefix=".kraken-hdfs-",
            )

        size = await self._op(f"open {hdfs_path}", attempt)
        log.debug("downloaded {path} ({bytes} bytes)", path=hdfs_path, bytes=size, namespace=namespace)

    # -- upload --

    async def _create(self, hdfs_path: str, path: str, size: int) -> None:
        async def handle(url: str, response: IResponse) -> str:
            await self._expect("PUT", url, response, frozenset({307}))
            return self._location("PUT", url, response)

        async def attempt() -> None:
            location = await self._namenode("PUT", hdfs_path, "CREATE", handle, {"overwrite": "true"})
            body = ThreadedFileProducer(path, 0, size, self._worker)
            response = await self._request(
                "PUT",
                location,
                headers={"content-type": "application/octet-stream"},
                data=body,
                timeout=self._slow_timeout(size),
            )
            await self._expect("PUT", location, response, frozenset({201}))

        await self._op(f"create {hdfs_path}", attempt)

    async def upload(self, namespace: str, name: str, path: str) -> None:
        final = self.pather.path(name)
        size = await self._worker.run(os.path.getsize, path)
        temp = f"{self._hdfs.upload_dir()}/{uuid.uuid4().hex}"
        try:
            await self._create(temp, path, size)
            await self._boolean_op("PUT", _parent(final), "MKDIRS")
            if not await self._boolean_op("PUT", temp, "RENAME", {"destination": final}):
                # HDFS's rename does not replace: drop the old blob and move again.
                await self._boolean_op("DELETE", final, "DELETE")
                if not await self._boolean_op("PUT", temp, "RENAME", {"destination": final}):
                    raise BackendError(f"RENAME {temp} -> {final} answered false")
        except BaseException as e:
            await self._discard(temp, e)
            raise
        log.debug("uploaded {path} ({bytes} bytes)", path=final, bytes=size, namespace=namespace)

    async def _discard(self, temp: str, why: BaseException) -> None:
        try:
            await self._boolean_op("DELETE", temp, "DELETE")
        except Exception as e:
            log.warn("deleting {temp} failed ({error}) after: {why}", temp=temp, error=str(e), why=str(why))

    # -- list --

    async def _children(self, directory: str) -> list[tuple[str, str]]:
        """(path, type) of each entry of ``directory``; [] if it does not exist."""

        async def handle(url: str, response: IResponse) -> list[tuple[str, str]]:
            body = await self._expect("GET", url, response, frozenset({200, 404}))
            if response.code == 404:
                return []
            try:
                statuses = _json(body, f"LISTSTATUS {directory}")["FileStatuses"]["FileStatus"]
                base = directory.rstrip("/")
                return [(f"{base}/{s['pathSuffix']}", str(s["type"])) for s in statuses if s.get("pathSuffix")]
            except (KeyError, TypeError):
                raise BackendError(f"LISTSTATUS {directory}: unexpected answer {body[:200]!r}") from None

        return await self._op(f"liststatus {directory}", lambda: self._namenode("GET", directory, "LISTSTATUS", handle))

    async def _walk(self, directory: str, key_prefix: str, prefix: str, names: list[str]) -> None:
        for child, kind in await self._children(directory):
            if kind == "DIRECTORY":
                if child == self._hdfs.upload_dir():
                    continue
                inside = child + "/"
                if inside.startswith(key_prefix) or key_prefix.startswith(inside):
                    await self._walk(child, key_prefix, prefix, names)
            elif child.startswith(key_prefix):
                try:
                    name = self.pather.name(child)
                except InvalidName:
                    continue  # not a name of this layout
                if name.startswith(prefix):
                    names.append(name)

    async def list(
        self, prefix: str = "", *, continuation: str | None = None, limit: int = DEFAULT_LIST_LIMIT
    ) -> ListPage:
        key_prefix = self.pather.list_prefix(prefix)
        names: list[str] = []
        await self._walk(_parent(key_prefix) if not key_prefix.endswith("/") else key_prefix, key_prefix, prefix, names)
        names.sort()
        if continuation is not None:
            names = [n for n in names if n > continuation]
        limit = max(1, limit)
        page = names[:limit]
        return ListPage(tuple(page), page[-1] if len(names) > limit else None)
