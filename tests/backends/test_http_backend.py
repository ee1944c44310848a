"""The read-only HTTP backend against a small twisted.web server on the real reactor."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
import pytest_twisted
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from kraken.backends import BackendError, BackendUnavailable, BlobNotFound, HTTPBackend, HTTPBackendConfig, IBackend
from kraken.net.client import HTTPClientConfig
from kraken.workers import ThreadWorker

NAMESPACE = "library/test"


class _Blobs(Resource):
    """``/blobs/sha256:<hex>``: the blobs in ``self.blobs`` (hex -> bytes), 404 otherwise;
    ``self.code`` overrides the status; requests are recorded."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.blobs: dict[str, bytes] = {}
        self.code: int | None = None
        self.requests: list[tuple[bytes, bytes]] = []

    def render(self, request: Any) -> bytes:
        self.requests.append((request.method, request.path))
        if self.code is not None:
            request.setResponseCode(self.code)
            return b""
        name = request.path.decode().removeprefix("/blobs/").removeprefix("sha256:")
        data = self.blobs.get(name)
        if data is None:
            request.setResponseCode(404)
            return b"no such blob"
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", str(len(data)).encode())  # twisted.web omits it for b""
        return data


@pytest_twisted.async_yield_fixture()
async def server(reactor: Any) -> Any:
    from twisted.internet.endpoints import TCP4ServerEndpoint

    resource = _Blobs()
    site = Site(resource)
    site.timeOut = None
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    resource.url = f"http://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]
    try:
        yield resource
    finally:
        await port.stopListening()


def _backend(reactor: Any, http: Any, url: str, placeholder: str = "{digest}") -> HTTPBackend:
    config = HTTPBackendConfig(
        download_url=f"{url}/blobs/{placeholder}",
        http_client=HTTPClientConfig(timeout=10.0, retries=1, backoff=0.01, max_backoff=0.01),
    )
    return HTTPBackend.create(config, http=http, clock=reactor, worker=ThreadWorker(reactor, reactor.getThreadPool()))


def _blob(size: int, seed: bytes = b"x") -> tuple[str, bytes]:
    data = (hashlib.sha256(seed).digest() * (size // 32 + 1))[:size]
    return hashlib.sha256(data).hexdigest(), data


def test_provides_the_interface(reactor: Any, http: Any) -> None:
    assert verifyObject(IBackend, _backend(reactor, http, "http://127.0.0.1:1"))


def test_url_template() -> None:
    hex_ = "ab" * 32
    assert HTTPBackendConfig("http://h/{digest}").url(hex_) == f"http://h/sha256:{hex_}"
    assert HTTPBackendConfig("http://h/{hex}/data").url(f"sha256:{hex_}") == f"http://h/{hex_}/data"


@pytest.mark.parametrize("placeholder", ["{digest}", "{hex}"])
@pytest_twisted.ensureDeferred
async def test_stat_and_download(reactor: Any, http: Any, server: Any, tmp_path: Any, placeholder: str) -> None:
    hex_, data = _blob(3 * (1 << 20) + 7)
    server.blobs[hex_] = data
    backend = _backend(reactor, http, server.url, placeholder)
    info = await backend.stat(NAMESPACE, f"sha256:{hex_}")
    assert info.size == len(data)
    target = tmp_path / "blob"
    await backend.download(NAMESPACE, hex_, str(target))
    assert target.read_bytes() == data
    assert [m for m, _ in server.requests] == [b"HEAD", b"GET"]
    assert os.listdir(tmp_path) == ["blob"]  # no temporary file left


@pytest_twisted.ensureDeferred
async def test_empty_blob(reactor: Any, http: Any, server: Any, tmp_path: Any) -> None:
    hex_ = hashlib.sha256(b"").hexdigest()
    server.blobs[hex_] = b""
    backend = _backend(reactor, http, server.url)
    assert (await backend.stat(NAMESPACE, hex_)).size == 0
    await backend.download(NAMESPACE, hex_, str(tmp_path / "empty"))
    assert (tmp_path / "empty").read_bytes() == b""


@pytest_twisted.ensureDeferred
async def test_missing_blob(reactor: Any, http: Any, server: Any, tmp_path: Any) -> None:
    backend = _backend(reactor, http, server.url)
    hex_ = "cd" * 32
    with pytest.raises(BlobNotFound):
        await backend.stat(NAMESPACE, hex_)
    (tmp_path / "target").write_bytes(b"old")
    with pytest.raises(BlobNotFound):
        await backend.download(NAMESPACE, hex_, str(tmp_path / "target"))
    assert (tmp_path / "target").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["target"]


@pytest_twisted.ensureDeferred
async def test_5xx_is_unavailable_after_a_retry(reactor: Any, http: Any, server: Any, tmp_path: Any) -> None:
    server.code = 503
    backend = _backend(reactor, http, server.url)
    with pytest.raises(BackendUnavailable):
        await backend.stat(NAMESPACE, "ab" * 32)
    with pytest.raises(BackendUnavailable):
        await backend.download(NAMESPACE, "ab" * 32, str(tmp_path / "target"))
    assert [m for m, _ in server.requests] == [b"HEAD", b"HEAD", b"GET", b"GET"]
    assert os.listdir(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_403_is_a_backend_error(reactor: Any, http: Any, server: Any) -> None:
    server.code = 403
    with pytest.raises(BackendError, match="HTTP 403") as caught:
        await _backend(reactor, http, server.url).stat(NAMESPACE, "ab" * 32)
    assert not isinstance(caught.value, (BlobNotFound, BackendUnavailable))
    assert len(server.requests) == 1


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_unavailable(reactor: Any, http: Any, server: Any) -> None:
    from twisted.internet.endpoints import TCP4ServerEndpoint

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Resource()))
    url = f"http://127.0.0.1:{port.getHost().port}"
    await port.stopListening()
    with pytest.raises(BackendUnavailable):
        await _backend(reactor, http, url).stat(NAMESPACE, "ab" * 32)


@pytest_twisted.ensureDeferred
async def test_upload_and_list_are_read_only(reactor: Any, http: Any, tmp_path: Any) -> None:
    backend = _backend(reactor, http, "http://127.0.0.1:1")
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(BackendError, match="read-only"):
        await backend.upload(NAMESPACE, "ab" * 32, str(tmp_path / "f"))
    with pytest.raises(BackendError, match="read-only"):
        await backend.list("")
