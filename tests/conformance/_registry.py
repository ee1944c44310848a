"""A small OCI distribution client for the conformance suite, on treq.

Every response passes through ``Registry.request``, which reads the whole body
(with a timeout as a backstop) and checks what the spec asks of *every*
response: ``Docker-Distribution-API-Version: registry/2.0``. The helpers push
blobs and manifests the plain way (POST + PUT) so that tests about pulling
have content to pull.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit

import attrs
import hyperlink
import treq
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

API_VERSION_HEADER = "Docker-Distribution-API-Version"
API_VERSION = "registry/2.0"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ALL_MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)

EMPTY_JSON = b"{}"
REQUEST_TIMEOUT = 120.0  # seconds: a backstop, not a wait


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:" + hashlib.new(algorithm, data).hexdigest()


EMPTY_DIGEST = digest_of(b"")


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


def unknown_digest(algorithm: str = "sha256") -> str:
    """The digest of random bytes nobody pushed."""
    return digest_of(os.urandom(32), algorithm)


@attrs.frozen
class Response:
    method: str
    url: str
    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        return list(self.headers.getRawHeaders(name) or [])

    def json(self) -> Any:
        return json.loads(self.body)

    def location(self) -> str:
        """The absolute URL of the ``Location`` header (resolved against the request URL)."""
        loc = self.header("Location")
        assert loc, f"{self.method} {self.url} -> {self.status}: no Location header"
        return urljoin(self.url, loc)

    def __str__(self) -> str:
        body = self.body[:300]
        return f"{self.method} {self.url} -> {self.status} {body!r}"


@implementer(IBodyProducer)
class StreamingBody:
    """A request body of unknown length: sent with ``Transfer-Encoding: chunked``."""

    length = UNKNOWN_LENGTH

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = list(chunks)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        for chunk in self._chunks:
            consumer.write(chunk)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its (possibly non-empty) query."""
    u = hyperlink.DecodedURL.from_text(url)
    for key, value in params.items():
        u = u.add(key, value)
    return u.to_text()


class Registry:
    """The registry under test, at ``base`` (``http://host:port``)."""

    def __init__(self, http: Any, base: str, reactor: Any) -> None:
        self.http = http
        self.base = base.rstrip("/")
        self.reactor = reactor

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base + path

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | IBodyProducer | None = None,
        headers: Mapping[str, str | Sequence[str]] | None = None,
        check_api_version: bool = True,
    ) -> Response:
        url = self.url(path)
        h = Headers()
        for name, value in (headers or {}).items():
            h.setRawHeaders(name, [value] if isinstance(value, str) else list(value))
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""

        async def go() -> Response:
            if method == "HEAD":
                return await raw_head(self.reactor, url, h)
            resp = await self.http.request(method, url, data=body, headers=h)
            content = await treq.content(resp)
            headers = resp.headers.copy()
            if isinstance(resp.length, int) and resp.code not in (204, 304):
                # Twisted's client parser keeps Content-Length out of .headers: put back what it read.
                headers.setRawHeaders("Content-Length", [str(resp.length)])
            return Response(method, url, resp.code, headers, content)

        d = defer.Deferred.fromCoroutine(go())
        d.addTimeout(REQUEST_TIMEOUT, self.reactor)
        resp = await d
        if check_api_version:
            assert resp.header(API_VERSION_HEADER) == API_VERSION, (
                f"{method} {url} -> {resp.status}: {API_VERSION_HEADER} is "
                f"{resp.header(API_VERSION_HEADER)!r}, not {API_VERSION!r}"
            )
        return resp

    # ---- blobs

    async def start_upload(self, repo: str) -> str:
        resp = await self.request("POST", f"/v2/{repo}/blobs/uploads/")
        assert resp.status == 202, str(resp)
        return resp.location()

    async def push_blob(self, repo: str, data: bytes, algorithm: str = "sha256") -> str:
        """POST then PUT ``?digest=`` with the whole blob; returns the digest."""
        digest = digest_of(data, algorithm)
        location = await self.start_upload(repo)
        resp = await self.request(
            "PUT",
            with_query(location, digest=digest),
            body=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert resp.status == 201, str(resp)
        return digest

    async def blob_exists(self, repo: str, digest: str) -> bool:
        resp = await self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        assert resp.status in (200, 404), str(resp)
        return resp.status == 200

    # ---- manifests

    async def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> Response:
        return await self.request(
            "PUT", f"/v2/{repo}/manifests/{reference}", body=body, headers={"Content-Type": media_type}
        )

    async def push_manifest(
        self, repo: str, reference: str, body: bytes, media_type: str, algorithm: str = "sha256"
    ) -> str:
        resp = await self.put_manifest(repo, reference, body, media_type)
        assert resp.status == 201, str(resp)
        return digest_of(body, algorithm)

    async def get_manifest(self, repo: str, reference: str, accept: Sequence[str] = ALL_MANIFEST_TYPES) -> Response:
        return await self.request("GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": ", ".join(accept)})

    async def push_image(
        self,
        repo: str,
        tag: str | None = None,
        *,
        layers: int = 2,
        media_type: str = OCI_MANIFEST,
        extra: Mapping[str, Any] | None = None,
        pretty: bool = True,
        algorithm: str = "sha256",
    ) -> Image:
        """Push the blobs of a small random image and its manifest (by tag, or by digest if ``tag`` is None),
        every digest of ``algorithm``."""
        image = make_image(layers=layers, media_type=media_type, extra=extra, pretty=pretty, algorithm=algorithm)
        for blob in image.blobs:
            await self.push_blob(repo, blob, algorithm)
        await self.push_manifest(repo, tag or image.digest, image.manifest, media_type, algorithm)
        return image


# ---- OCI errors


def error_codes(resp: Response) -> list[str]:
    """The codes of an OCI error body, checking its shape: ``{"errors":[{"code","message",...}]}``."""
    content_type = resp.header("Content-Type") or ""
    assert content_type.split(";")[0].strip() == "application/json", f"{resp}: error Content-Type is {content_type!r}"
    doc = json.loads(resp.body)
    assert isinstance(doc, dict) and isinstance(doc.get("errors"), list) and doc["errors"], (
        f"{resp}: not an OCI error body"
    )
    for entry in doc["errors"]:
        assert isinstance(entry, dict), f"{resp}: error entry {entry!r}"
        assert isinstance(entry.get("code"), str) and entry["code"], f"{resp}: error entry without code"
        assert isinstance(entry.get("message"), str), f"{resp}: error entry without a message string"
    return [entry["code"] for entry in doc["errors"]]


def assert_error(resp: Response, status: int | Sequence[int], code: str | Sequence[str]) -> None:
    """``resp`` has one of the statuses and an OCI error body with one of the codes (HEAD: no body)."""
    statuses = (status,) if isinstance(status, int) else tuple(status)
    wanted = (code,) if isinstance(code, str) else tuple(code)
    assert resp.status in statuses, f"expected {statuses} {wanted}, got {resp}"
    if resp.method == "HEAD":
        assert resp.body == b"", f"{resp}: a HEAD response has a body"
        return
    codes = error_codes(resp)
    assert set(wanted) & set(codes), f"expected one of {wanted} in {codes} ({resp})"


# ---- content


def small_tar(files: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def dumps(doc: Any, pretty: bool) -> bytes:
    """JSON that is deliberately not canonical when ``pretty``: the registry must keep the exact bytes."""
    if pretty:
        return (json.dumps(doc, indent=3) + "\n").encode()
    return json.dumps(doc, separators=(",", ":")).encode()


@attrs.frozen
class Image:
    manifest: bytes
    media_type: str
    config: bytes
    layers: tuple[bytes, ...]
    algorithm: str = "sha256"

    @property
    def digest(self) -> str:
        return digest_of(self.manifest, self.algorithm)

    @property
    def blobs(self) -> tuple[bytes, ...]:
        return (self.config, *self.layers)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.manifest), **extra}


def make_image(
    *,
    layers: int = 2,
    media_type: str = OCI_MANIFEST,
    extra: Mapping[str, Any] | None = None,
    pretty: bool = True,
    architecture: str = "amd64",
    algorithm: str = "sha256",
) -> Image:
    """A small image with random layer content (so its blobs are new to the registry), every digest in it (and
    its own) of ``algorithm``."""
    docker = media_type == DOCKER_MANIFEST
    layer_blobs = []
    for i in range(layers):
        tar = small_tar({f"file{i}.bin": os.urandom(64 + i)})
        layer_blobs.append(gzip.compress(tar, mtime=0) if docker else tar)
    diff_ids = [digest_of(gzip.decompress(b) if docker else b, algorithm) for b in layer_blobs]
    config = json.dumps(
        {"architecture": architecture, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}},
        separators=(",", ":"),
    ).encode()
    layer_type = DOCKER_LAYER if docker else OCI_LAYER
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
            "digest": digest_of(config, algorithm),
            "size": len(config),
        },
        "layers": [{"mediaType": layer_type, "digest": digest_of(b, algorithm), "size": len(b)} for b in layer_blobs],
    }
    doc.update(extra or {})
    return Image(dumps(doc, pretty), media_type, config, tuple(layer_blobs), algorithm)


def make_index(images: Sequence[Image], media_type: str = OCI_INDEX, pretty: bool = True) -> bytes:
    archs = ["amd64", "arm64", "ppc64le", "s390x"]
    return dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [
                img.descriptor(platform={"architecture": archs[i % len(archs)], "os": "linux"})
                for i, img in enumerate(images)
            ],
        },
        pretty,
    )


# ---- pagination

_LINK = re.compile(r'^\s*<([^>]*)>\s*;\s*rel="?next"?\s*$')


def next_link(resp: Response) -> str | None:
    """The absolute URL of an RFC 5988 ``Link: <url>; rel="next"`` header, or None."""
    values = resp.header_values("Link")
    if not values:
        return None
    assert len(values) == 1, f"{resp}: several Link headers {values}"
    m = _LINK.match(values[0])
    assert m, f"{resp}: Link header {values[0]!r} is not '<url>; rel=\"next\"'"
    return urljoin(resp.url, m.group(1))


# ---- a raw HTTP/1.1 client, for requests treq cannot send (a body shorter than its Content-Length)


class _Collect(protocol.Protocol):
    def __init__(self, request: bytes, half_close: bool) -> None:
        self._request = request
        self._half_close = half_close
        self.received = bytearray()
        self.done: defer.Deferred[bytes] = defer.Deferred(lambda _: self.transport.abortConnection())

    def connectionMade(self) -> None:
        self.transport.write(self._request)
        if self._half_close:
            self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        if not self.done.called:
            self.done.callback(bytes(self.received))


async def raw_exchange(
    reactor: Any, url: str, request_head: str, body: bytes, *, half_close: bool = True, timeout: float = 60.0
) -> bytes:
    """Send ``request_head`` + ``body`` to ``url``'s host and return all the server sent.

    With ``half_close`` our sending side is shut after the bytes (the server
    sees the end of the stream). Returns once the server has closed the
    connection (with a timeout as a backstop).
    """
    parts = urlsplit(url)
    proto = _Collect(request_head.encode("latin-1") + body, half_close=half_close)
    endpoint = TCP4ClientEndpoint(reactor, parts.hostname, parts.port or 80)
    connected = endpoint.connect(protocol.Factory.forProtocol(lambda: proto))
    connected.addTimeout(timeout, reactor)
    await connected
    proto.done.addTimeout(timeout, reactor)
    return await proto.done


async def raw_head(reactor: Any, url: str, headers: Headers) -> Response:
    """A HEAD request on its own connection, so the response's Content-Length header can be seen.

    (Twisted's client forces a HEAD response's length to 0 and hides the header.)
    """
    parts = urlsplit(url)
    lines = [f"HEAD {request_target(url)} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    for name, values in headers.getAllRawHeaders():
        lines.extend(f"{name.decode('latin-1')}: {v.decode('latin-1')}" for v in values)
    received = await raw_exchange(reactor, url, "\r\n".join(lines) + "\r\n\r\n", b"", half_close=False)
    head, sep, rest = received.partition(b"\r\n\r\n")
    assert sep, f"HEAD {url}: incomplete response {received!r}"
    assert rest == b"", f"HEAD {url}: the response carries a body {rest[:200]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = status_line.split(" ", 2)
    assert version.startswith("HTTP/1."), status_line
    parsed = Headers()
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed.addRawHeader(name.strip(), value.strip())
    return Response("HEAD", url, int(status), parsed, b"")


def request_target(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")
