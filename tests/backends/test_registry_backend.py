"""The upstream-registry backend against Debian's docker-registry, and its auth against fakes.

The ``docker_registry`` fixture starts ``docker-registry serve`` (through
``tests/servers.py``) with filesystem storage under a temporary directory on
a port the OS picks, and stops it at the end of the module. Blobs and a
manifest are pushed to it with plain urllib before the tests run.
docker-registry's token auth needs certificates, so the bearer and basic
flows are tested against a small fake registry and token server in-process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import pytest_twisted
from servers import running_docker_registry
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from kraken.backends import BackendError, BlobNotFound, IBackend, RegistryBackend, RegistryConfig
from kraken.backends.registry import ACCEPT, parse_challenge
from kraken.core import Digest
from kraken.net.client import HTTPClientConfig
from kraken.store.growing import GrowingFile
from kraken.workers import ThreadWorker

REPO = "library/kraken-test"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


# --------------------------------------------------------------------------- docker-registry


@attrs.frozen
class Pushed:
    url: str
    blob_hex: str
    blob: bytes
    manifest: bytes
    tag: str


def _push_blob(url: str, repo: str, data: bytes) -> str:
    """A monolithic upload: POST opens a session (distribution 2.8 ignores ``?digest=`` on POST), PUT sends it all."""
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    opened = urllib.request.Request(f"{url}/v2/{repo}/blobs/uploads/", data=b"", method="POST")
    with urllib.request.urlopen(opened, timeout=30) as response:
        assert response.status == 202, response.status
        location = urllib.parse.urljoin(url, response.headers["Location"])
    separator = "&" if "?" in location else "?"
    put = urllib.request.Request(
        f"{location}{separator}digest={digest}",
        data=data,
        method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(put, timeout=30) as response:
        assert response.status == 201, response.status
    return digest


def _push(url: str) -> Pushed:
    blob = os.urandom(256 << 10)
    layer = _push_blob(url, REPO, blob)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    config_digest = _push_blob(url, REPO, config.encode())
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": len(blob)}],
        }
    ).encode()
    request = urllib.request.Request(
        f"{url}/v2/{REPO}/manifests/v1", data=manifest, method="PUT", headers={"Content-Type": OCI_MANIFEST}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201, response.status
    return Pushed(url, layer.removeprefix("sha256:"), blob, manifest, "v1")


@pytest.fixture(scope="module")
def docker_registry(tmp_path_factory: Any) -> Iterator[Pushed]:
    with running_docker_registry(str(tmp_path_factory.mktemp("registry"))) as registry:
        yield _push(registry.url)


def _backend(reactor: Any, http: Any, address: str, clock: Any = None, **settings: Any) -> RegistryBackend:
    config = RegistryConfig(
        address=address,
        http_client=HTTPClientConfig(timeout=10.0, retries=0, backoff=0.01, max_backoff=0.01),
        **settings,
    )
    worker = ThreadWorker(reactor, reactor.getThreadPool())
    return RegistryBackend.create(config, http=http, clock=clock or reactor, worker=worker)


def test_provides_the_interface(reactor: Any, http: Any) -> None:
    assert verifyObject(IBackend, _backend(reactor, http, "127.0.0.1:1"))


def test_address_and_scheme() -> None:
    assert RegistryConfig("mirror:5000").base_url() == "https://mirror:5000"
    assert RegistryConfig("mirror:5000", tls=False).base_url() == "http://mirror:5000"
    assert RegistryConfig("http://mirror:5000/", tls=True).base_url() == "http://mirror:5000"
    with pytest.raises(ValueError):
        RegistryConfig("ftp://mirror")


@pytest_twisted.ensureDeferred
async def test_stat_and_download_a_blob(reactor: Any, http: Any, docker_registry: Pushed, tmp_path: Any) -> None:
    backend = _backend(reactor, http, docker_registry.url)
    info = await backend.stat(REPO, f"sha256:{docker_registry.blob_hex}")
    assert info.size == len(docker_registry.blob)
    await backend.download(REPO, docker_registry.blob_hex, str(tmp_path / "blob"))
    assert (tmp_path / "blob").read_bytes() == docker_registry.blob
    assert os.listdir(tmp_path) == ["blob"]


@pytest_twisted.ensureDeferred
async def test_a_growing_download_tells_each_byte_and_its_sha256(
    reactor: Any, http: Any, docker_registry: Pushed, tmp_path: Any
) -> None:
    backend = _backend(reactor, http, docker_registry.url)
    growing = GrowingFile(len(docker_registry.blob))
    opened = growing.opened()
    await backend.download_growing(REPO, docker_registry.blob_hex, str(tmp_path / "blob"), growing)
    assert opened.called and growing.written == len(docker_registry.blob) and growing.live  # the caller ends it
    assert growing.sha256.hexdigest() == hashlib.sha256(docker_registry.blob).hexdigest()
    fd = growing.open_reader()  # the temporary file, renamed since: the same bytes
    try:
        assert os.pread(fd, len(docker_registry.blob), 0) == docker_registry.blob
    finally:
        os.close(fd)
    growing.end(None)
    assert (tmp_path / "blob").read_bytes() == docker_registry.blob


@pytest_twisted.ensureDeferred
async def test_a_manifest_is_found_as_a_blob(reactor: Any, http: Any, docker_registry: Pushed, tmp_path: Any) -> None:
    backend = _backend(reactor, http, docker_registry.url, tls=True)  # the URL's http:// wins
    digest = Digest.from_bytes(docker_registry.manifest)
    assert (await backend.stat(REPO, str(digest))).size == len(docker_registry.manifest)
    await backend.download(REPO, str(digest), str(tmp_path / "manifest"))
    assert (tmp_path / "manifest").read_bytes() == docker_registry.manifest


@pytest_twisted.ensureDeferred
async def test_a_missing_blob(reactor: Any, http: Any, docker_registry: Pushed, tmp_path: Any) -> None:
    backend = _backend(reactor, http, docker_registry.url)
    missing = hashlib.sha256(b"never pushed").hexdigest()
    with pytest.raises(BlobNotFound):
        await backend.stat(REPO, missing)
    with pytest.raises(BlobNotFound):
        await backend.download(REPO, missing, str(tmp_path / "target"))
    with pytest.raises(BlobNotFound):  # the blob exists, but not in this repository
        await backend.stat("library/other", docker_registry.blob_hex)
    assert os.listdir(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_resolve_tag(reactor: Any, http: Any, docker_registry: Pushed) -> None:
    backend = _backend(reactor, http, docker_registry.url.removeprefix("http://"), tls=False)
    digest = await backend.resolve_tag(REPO, docker_registry.tag)
    assert digest == Digest.from_bytes(docker_registry.manifest)
    with pytest.raises(BlobNotFound, match="v2"):
        await backend.resolve_tag(REPO, "v2")


@pytest_twisted.ensureDeferred
async def test_upload_and_list_are_read_only(reactor: Any, http: Any, tmp_path: Any) -> None:
    backend = _backend(reactor, http, "127.0.0.1:1")
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(BackendError, match="read-only"):
        await backend.upload(REPO, "ab" * 32, str(tmp_path / "f"))
    with pytest.raises(BackendError, match="read-only"):
        await backend.list("")


# --------------------------------------------------------------------------- auth against fakes

BLOB = b"a blob behind auth"
BLOB_HEX = hashlib.sha256(BLOB).hexdigest()


def _basic(username: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{username}:{password}".encode())


class _FakeRegistry(Resource):
    """A registry serving ``BLOB`` in every repository, behind ``auth`` ("bearer" or "basic"),
    and its token server at ``/token`` (which wants basic ``user:secret``). Records requests."""

    isLeaf = True

    def __init__(self, auth: str) -> None:
        super().__init__()
        self.auth = auth
        self.url = ""
        self.tokens: set[bytes] = set()
        self.token_requests: list[dict[bytes, list[bytes]]] = []
        self.requests: list[tuple[bytes, bytes, bytes | None]] = []

    def render(self, request: Any) -> bytes:
        authorization = request.getHeader(b"authorization")
        if request.path == b"/token":
            self.token_requests.append(dict(request.args))
            if authorization != _basic("user", "secret"):
                request.setResponseCode(401)
                return b'{"errors": [{"code": "UNAUTHORIZED"}]}'
            token = f"tok-{len(self.token_requests)}"
            self.tokens.add(f"Bearer {token}".encode())
            return json.dumps({"token": token, "expires_in": 60}).encode()
        self.requests.append((request.method, request.path, authorization))
        m = re.fullmatch(rb"/v2/(.+)/blobs/sha256:([0-9a-f]{64})", request.path)
        allowed = authorization in self.tokens if self.auth == "bearer" else authorization == _basic("user", "secret")
        if not allowed:
            request.setResponseCode(401)
            if self.auth == "bearer":
                repo = m.group(1).decode() if m else ""
                challenge = f'Bearer realm="{self.url}/token",service="fake",scope="repository:{repo}:pull"'
            else:
                challenge = 'Basic realm="fake"'
            request.setHeader(b"www-authenticate", challenge.encode())
            return b'{"errors": [{"code": "UNAUTHORIZED"}]}'
        if m is None or m.group(2).decode() != BLOB_HEX:
            request.setResponseCode(404)
            return b""
        request.setHeader(b"content-length", str(len(BLOB)).encode())
        return BLOB


@pytest_twisted.async_yield_fixture()
async def fake(reactor: Any) -> Any:
    """``fake(auth)`` -> a started ``_FakeRegistry``; every port is closed at the end."""
    from twisted.internet.endpoints import TCP4ServerEndpoint

    ports = []

    async def start(auth: str) -> _FakeRegistry:
        resource = _FakeRegistry(auth)
        site = Site(resource)
        site.timeOut = None
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        ports.append(port)
        resource.url = f"http://127.0.0.1:{port.getHost().port}"
        return resource

    try:
        yield start
    finally:
        for port in ports:
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_bearer_token_flow(reactor: Any, http: Any, fake: Any, tmp_path: Any) -> None:
    server = await fake("bearer")
    clock = Clock()  # the token's lifetime runs on it (no retries, so nothing else waits on it)
    backend = _backend(reactor, http, server.url, clock, username="user", password="secret")
    assert (await backend.stat(REPO, BLOB_HEX)).size == len(BLOB)
    assert server.token_requests == [{b"service": [b"fake"], b"scope": [f"repository:{REPO}:pull".encode()]}]
    assert [auth for _, _, auth in server.requests] == [None, b"Bearer tok-1"]

    # The token is cached for its scope: no 401 and no new token.
    await backend.download(REPO, BLOB_HEX, str(tmp_path / "blob"))
    assert (tmp_path / "blob").read_bytes() == BLOB
    assert len(server.token_requests) == 1
    assert server.requests[-1] == (b"GET", f"/v2/{REPO}/blobs/sha256:{BLOB_HEX}".encode(), b"Bearer tok-1")

    # Expired: the request goes out bare, is challenged, and a new token is fetched.
    clock.advance(61)
    await backend.stat(REPO, BLOB_HEX)
    assert len(server.token_requests) == 2
    assert [auth for _, _, auth in server.requests[-2:]] == [None, b"Bearer tok-2"]


@pytest_twisted.ensureDeferred
async def test_bearer_token_refused(reactor: Any, http: Any, fake: Any) -> None:
    server = await fake("bearer")
    backend = _backend(reactor, http, server.url, username="user", password="wrong")
    with pytest.raises(BackendError, match="refused the credentials"):
        await backend.stat(REPO, BLOB_HEX)
    anonymous = _backend(reactor, http, server.url)
    with pytest.raises(BackendError, match="refused the credentials"):
        await anonymous.stat(REPO, BLOB_HEX)
    assert b"authorization" not in server.token_requests[-1]


@pytest_twisted.ensureDeferred
async def test_basic_auth(reactor: Any, http: Any, fake: Any) -> None:
    server = await fake("basic")
    backend = _backend(reactor, http, server.url, username="user", password="secret")
    assert (await backend.stat(REPO, BLOB_HEX)).size == len(BLOB)
    assert [auth for _, _, auth in server.requests] == [None, _basic("user", "secret")]
    await backend.stat(REPO, BLOB_HEX)  # sent up front now
    assert len(server.requests) == 3
    assert server.token_requests == []

    with pytest.raises(BackendError, match="no username is configured"):
        await _backend(reactor, http, server.url).stat(REPO, BLOB_HEX)
    with pytest.raises(BackendError, match="unauthorized, even with credentials"):
        await _backend(reactor, http, server.url, username="user", password="wrong").stat(REPO, BLOB_HEX)


def test_parse_challenge() -> None:
    header = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="a:b:pull"'
    assert parse_challenge(header) == (
        "bearer",
        {"realm": "https://auth.docker.io/token", "service": "registry.docker.io", "scope": "a:b:pull"},
    )
    assert parse_challenge('Basic realm="x y"') == ("basic", {"realm": "x y"})
    bare = parse_challenge("Bearer realm=https://h/t, service=s")
    assert bare == ("bearer", {"realm": "https://h/t", "service": "s"})


def test_accept_lists_the_four_manifest_types() -> None:
    assert ACCEPT.count(",") == 3 and OCI_MANIFEST in ACCEPT
