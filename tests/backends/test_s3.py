"""The S3 backend against a real moto server, plus its config and error mapping.

The ``moto_server`` fixture starts moto's ``moto_server`` (from this
interpreter's venv, through ``tests/servers.py``) on a port the OS picks,
creates a bucket and stops the server at the end of the module. moto does
not verify signatures, so the signer is checked against the worked examples
of the AWS S3 SigV4 documentation instead (``test_s3_signing.py``).
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import pytest_twisted
from servers import S3_ACCESS_KEY, S3_SECRET_KEY, running_moto
from twisted.web.resource import Resource
from twisted.web.server import Site

from kraken.backends.base import BackendError, BackendUnavailable, BlobNotFound, IBackend
from kraken.backends.s3 import S3Backend, S3Config
from kraken.net.client import HTTPClientConfig, make_http_client
from kraken.workers import ThreadWorker

from .conformance import BackendConformance

MIB = 1 << 20
ACCESS_KEY = S3_ACCESS_KEY
SECRET_KEY = S3_SECRET_KEY


# --------------------------------------------------------------------------- the moto server


@attrs.frozen
class Moto:
    url: str
    bucket: str


@pytest.fixture(scope="module")
def moto_server() -> Iterator[Moto]:
    with running_moto() as server:
        moto = Moto(server.url, f"kraken-{uuid.uuid4().hex[:12]}")
        server.create_bucket(moto.bucket)
        yield moto


# --------------------------------------------------------------------------- the backend under test


@attrs.define
class Harness:
    backend: S3Backend
    config: S3Config
    tmp: Any


def _config(moto: Moto, **overrides: Any) -> S3Config:
    fields: dict[str, Any] = {
        "bucket": moto.bucket,
        "endpoint": moto.url,
        "root_directory": f"test-{uuid.uuid4().hex[:8]}",
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "upload_part_size": 5 * MIB,
        "download_part_size": 5 * MIB,
        "upload_concurrency": 3,
        "download_concurrency": 3,
        "http_client": HTTPClientConfig(timeout=30.0, retries=1, backoff=0.01, max_backoff=0.01),
    }
    fields.update(overrides)
    return S3Config(**fields)


@pytest_twisted.async_yield_fixture()
async def make_s3(reactor: Any, tmp_path: Any) -> Any:
    """``make_s3(config)`` -> a ``Harness``; every HTTP pool is closed at the end."""
    services = []
    worker = ThreadWorker(reactor, reactor.getThreadPool())

    def make(config: S3Config) -> Harness:
        http, service = make_http_client(reactor, config.http_client)
        services.append(service)
        return Harness(S3Backend.create(config, http=http, clock=reactor, worker=worker), config, tmp_path)

    try:
        yield make
    finally:
        for service in services:
            await service.stopService()


@pytest.fixture
def s3(make_s3: Any, moto_server: Moto) -> Harness:
    h: Harness = make_s3(_config(moto_server))
    return h


def _write(path: Any, size: int, seed: bytes = b"kraken") -> bytes:
    block = hashlib.sha256(seed).digest() * (1 << 15)  # 1 MiB of a pattern that differs per seed
    data = (block * (size // len(block) + 1))[:size]
    # Make every MiB distinct, so a part written at the wrong offset shows.
    data = b"".join(i.to_bytes(8, "big") + data[i * MIB + 8 : (i + 1) * MIB] for i in range(-(-size // MIB)))[:size]
    path.write_bytes(data)
    return data


def _leftovers(directory: Any) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith(".kraken-s3-"))


# --------------------------------------------------------------------------- round trips against moto


def test_provides_the_interface(s3: Harness) -> None:
    assert IBackend.providedBy(s3.backend)


@pytest_twisted.ensureDeferred
async def test_stat_and_download_of_a_missing_blob(s3: Harness) -> None:
    with pytest.raises(BlobNotFound):
        await s3.backend.stat("library/ubuntu", "missing")
    target = s3.tmp / "target"
    target.write_bytes(b"old")
    with pytest.raises(BlobNotFound):
        await s3.backend.download("library/ubuntu", "missing", str(target))
    assert target.read_bytes() == b"old"
    assert _leftovers(s3.tmp) == []


@pytest_twisted.ensureDeferred
async def test_small_round_trip(s3: Harness) -> None:
    source = s3.tmp / "source"
    data = _write(source, 300_000)
    await s3.backend.upload("library/ubuntu", "a/b c~d.txt", str(source))
    info = await s3.backend.stat("library/ubuntu", "a/b c~d.txt")
    assert info.size == len(data)
    target = s3.tmp / "target"
    target.write_bytes(b"old")
    await s3.backend.download("library/ubuntu", "a/b c~d.txt", str(target))
    assert target.read_bytes() == data
    assert _leftovers(s3.tmp) == []


@pytest_twisted.ensureDeferred
async def test_empty_blob(s3: Harness) -> None:
    source = s3.tmp / "empty"
    source.write_bytes(b"")
    await s3.backend.upload("ns", "empty", str(source))
    assert (await s3.backend.stat("ns", "empty")).size == 0
    target = s3.tmp / "target"
    await s3.backend.download("ns", "empty", str(target))
    assert target.read_bytes() == b""


@pytest_twisted.ensureDeferred
async def test_upload_replaces(s3: Harness) -> None:
    source = s3.tmp / "source"
    _write(source, 1000, b"one")
    await s3.backend.upload("ns", "name", str(source))
    data = _write(source, 2000, b"two")
    await s3.backend.upload("ns", "name", str(source))
    target = s3.tmp / "target"
    await s3.backend.download("ns", "name", str(target))
    assert target.read_bytes() == data


@pytest_twisted.ensureDeferred
async def test_multipart_upload_and_ranged_download(s3: Harness, moto_server: Moto) -> None:
    source = s3.tmp / "source"
    data = _write(source, 12 * MIB + 12345)  # parts of 5, 5 and 2 MiB
    digest = hashlib.sha256(data).hexdigest()
    h = S3Backend.create(attrs.evolve(s3.config, name_path="sharded_docker_blob"), **_parts(s3.backend))
    await h.upload("library/ubuntu", f"sha256:{digest}", str(source))
    assert (await h.stat("library/ubuntu", digest)).size == len(data)
    target = s3.tmp / "target"
    await h.download("library/ubuntu", digest, str(target))
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    # distribution's layout: a registry reading the bucket finds the blob where it expects it.
    import boto3

    client = boto3.client(
        "s3", endpoint_url=moto_server.url, region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
    )  # fmt: skip
    key = f"{s3.config.root_directory}/docker/registry/v2/blobs/sha256/{digest[:2]}/{digest}/data"
    assert client.head_object(Bucket=moto_server.bucket, Key=key)["ContentLength"] == len(data)
    assert client.list_multipart_uploads(Bucket=moto_server.bucket).get("Uploads", []) == []
    assert (await h.list(digest[:4])).names == (digest,)


def _parts(backend: S3Backend) -> dict[str, Any]:
    return {"http": backend._http, "clock": backend._clock, "worker": backend._worker}


@pytest_twisted.ensureDeferred
async def test_list_pages_and_prefix(make_s3: Any, moto_server: Moto) -> None:
    s3: Harness = make_s3(_config(moto_server, list_max_keys=2))
    source = s3.tmp / "source"
    _write(source, 10)
    names = ["a/1", "a/2", "a/3", "b/1", "c"]
    for name in names:
        await s3.backend.upload("ns", name, str(source))

    # list_max_keys is the size of each ListObjectsV2 request; a page holds up to ``limit`` names.
    assert (await s3.backend.list("", limit=1000)).names == tuple(names)
    seen: list[str] = []
    continuation = None
    pages = 0
    while True:
        page = await s3.backend.list("", continuation=continuation, limit=2)
        assert len(page.names) <= 2
        seen.extend(page.names)
        pages += 1
        continuation = page.continuation
        if continuation is None:
            break
    assert seen == names
    assert pages == 3

    page = await s3.backend.list("a/", limit=2)
    assert page.names == ("a/1", "a/2")
    assert page.continuation is not None
    rest = await s3.backend.list("a/", continuation=page.continuation)
    assert rest.names == ("a/3",)
    assert rest.continuation is None
    assert (await s3.backend.list("zzz")).names == ()


@pytest_twisted.ensureDeferred
async def test_round_trip_64mib(make_s3: Any, moto_server: Moto) -> None:
    """The default part sizes (64 MiB: one PUT, one GET). Throughput belongs to bench/, not here."""
    s3: Harness = make_s3(_config(moto_server, upload_part_size=64 * MIB, download_part_size=64 * MIB))
    source = s3.tmp / "source"
    data = _write(source, 64 * MIB)
    await s3.backend.upload("ns", "big", str(source))
    target = s3.tmp / "target"
    await s3.backend.download("ns", "big", str(target))
    assert target.read_bytes() == data


# --------------------------------------------------------------------------- the shared conformance tests


class TestS3Identity(BackendConformance):
    """Every test gets an empty root directory in the module's bucket."""

    @pytest.fixture
    def backend(self, make_s3: Any, moto_server: Moto) -> S3Backend:
        h: Harness = make_s3(_config(moto_server))
        return h.backend


class TestS3ShardedDockerBlob(BackendConformance):
    @pytest.fixture
    def backend(self, make_s3: Any, moto_server: Moto) -> S3Backend:
        h: Harness = make_s3(_config(moto_server, name_path="sharded_docker_blob", list_max_keys=2))
        return h.backend


# --------------------------------------------------------------------------- error mapping


def _closed_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_unavailable(make_s3: Any, tmp_path: Any) -> None:
    config = S3Config(
        bucket="b",
        endpoint=f"http://127.0.0.1:{_closed_port()}",
        http_client=HTTPClientConfig(retries=1, backoff=0.01, max_backoff=0.01),
    )
    s3: Harness = make_s3(config)
    source = tmp_path / "source"
    source.write_bytes(b"x")
    with pytest.raises(BackendUnavailable):
        await s3.backend.stat("ns", "name")
    with pytest.raises(BackendUnavailable):
        await s3.backend.upload("ns", "name", str(source))
    with pytest.raises(BackendUnavailable):
        await s3.backend.download("ns", "name", str(tmp_path / "target"))
    with pytest.raises(BackendUnavailable):
        await s3.backend.list("")
    assert not (tmp_path / "target").exists()
    assert _leftovers(tmp_path) == []


class _Canned(Resource):
    """Answers every request with ``code`` and an S3 error body; counts requests."""

    isLeaf = True

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code
        self.requests: list[bytes] = []

    def render(self, request: Any) -> bytes:
        self.requests.append(request.method)
        request.setResponseCode(self.code)
        if request.method == b"HEAD":
            return b""
        return b"<Error><Code>Canned</Code><Message>canned</Message></Error>"


@pytest_twisted.async_yield_fixture()
async def canned(reactor: Any) -> Any:
    """``canned.code = N``: a local server answering everything with N, at ``canned.url``."""
    from twisted.internet.endpoints import TCP4ServerEndpoint

    resource = _Canned(503)
    site = Site(resource)
    site.timeOut = None
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    resource.url = f"http://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]
    try:
        yield resource
    finally:
        await port.stopListening()


@pytest.mark.parametrize("code", [500, 503])
@pytest_twisted.ensureDeferred
async def test_5xx_is_unavailable(make_s3: Any, canned: Any, tmp_path: Any, code: int) -> None:
    canned.code = code
    s3: Harness = make_s3(
        S3Config(
            bucket="b",
            endpoint=canned.url,
            access_key="a",
            secret_key="s",
            http_client=HTTPClientConfig(retries=1, backoff=0.01, max_backoff=0.01),
        )
    )
    source = tmp_path / "source"
    source.write_bytes(b"x" * 100)
    with pytest.raises(BackendUnavailable):
        await s3.backend.stat("ns", "name")
    with pytest.raises(BackendUnavailable):
        await s3.backend.upload("ns", "name", str(source))
    with pytest.raises(BackendUnavailable, match="Canned"):
        await s3.backend.list("")
    # 503 is retried (with_retries), 500 is not.
    assert canned.requests.count(b"HEAD") == (2 if code == 503 else 1)


@pytest_twisted.ensureDeferred
async def test_403_is_a_backend_error_and_404_not_found(make_s3: Any, canned: Any, tmp_path: Any) -> None:
    s3: Harness = make_s3(S3Config(bucket="b", endpoint=canned.url))
    canned.code = 403
    with pytest.raises(BackendError) as caught:
        await s3.backend.list("")
    assert not isinstance(caught.value, BackendUnavailable)
    assert "Canned" in str(caught.value)
    canned.code = 404
    with pytest.raises(BlobNotFound):
        await s3.backend.stat("ns", "name")


# --------------------------------------------------------------------------- the config


def test_urls_path_and_virtual_hosted_style() -> None:
    assert S3Config(bucket="b", endpoint="http://minio:9000/").bucket_url() == "http://minio:9000/b"
    assert S3Config(bucket="b", region="eu-west-1").bucket_url() == "https://b.s3.eu-west-1.amazonaws.com"
    assert S3Config(bucket="b", force_path_style=True).bucket_url() == "https://s3.us-east-1.amazonaws.com/b"
    forced = S3Config(bucket="b", endpoint="http://minio:9000", force_path_style=False)
    assert forced.bucket_url() == "http://b.minio:9000"


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="5MiB"):
        S3Config(bucket="b", upload_part_size=MIB)
    with pytest.raises(ValueError, match="name_path"):
        S3Config(bucket="b", name_path="nope")
    with pytest.raises(ValueError, match="access_key"):
        S3Config(bucket="b", access_key="x")
    with pytest.raises(ValueError, match="list_max_keys"):
        S3Config(bucket="b", list_max_keys=1001)


def test_config_from_yaml_sizes() -> None:
    from kraken.config import build, from_mapping

    config = build(
        S3Config,
        from_mapping({"bucket": "b", "upload_part_size": "16MiB", "http_client": {"timeout": "5s"}}),
    )
    assert config.upload_part_size == 16 * MIB
    assert config.http_client.timeout == 5.0
    assert config.list_max_keys == 250
