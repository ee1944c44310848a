"""The proxy's HTTP app (``kraken.proxy.http``): a writable registry API with
the limits of the ``registry:`` config section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from registry.memory import MemorySource
from results import result_of
from treq.testing import StubTreq
from twisted.internet.task import Clock

from kraken.core import Digest
from kraken.proxy.config import RegistryConfig
from kraken.proxy.http import proxy_api
from kraken.registry.errors import DigestInvalid
from kraken.registry.manifests import OCI_CONFIG, OCI_MANIFEST
from kraken.store import UploadArea
from kraken.workers import InlineWorker

BASE = "http://proxy.test"


def serve(tmp_path: Path, config: RegistryConfig) -> tuple[MemorySource, StubTreq]:
    source = MemorySource(str(tmp_path / "blobs"))
    uploads = UploadArea(str(tmp_path / "uploads"), InlineWorker())
    return source, StubTreq(proxy_api(source, uploads, clock=Clock(), config=config).resource())


def call(stub: StubTreq, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, Any, Any]:
    resp = result_of(stub.request(method, BASE + path, data=body, headers=headers), stub.flush)
    content = result_of(stub.content(resp), stub.flush)
    return resp.code, resp.headers, json.loads(content) if content else None


def manifest(refs: int) -> bytes:
    digests = [str(Digest.from_bytes(b"%d" % i)) for i in range(refs)]
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digests[0], "size": 1},
        "layers": [{"mediaType": OCI_CONFIG, "digest": d, "size": 1} for d in digests[1:]],
    }).encode()  # fmt: skip


def test_uploads_are_accepted(tmp_path: Path) -> None:
    _, stub = serve(tmp_path, RegistryConfig())
    code, headers, _ = call(stub, "POST", "/v2/team/app/blobs/uploads/")
    assert code == 202
    assert headers.getRawHeaders("location")[0].startswith("/v2/team/app/blobs/uploads/")


def test_the_page_size_is_capped(tmp_path: Path) -> None:
    source, stub = serve(tmp_path, RegistryConfig(max_page=2))
    for repo in ("a", "b", "c"):
        source.add_repo(repo)
    code, headers, body = call(stub, "GET", "/v2/_catalog?n=50")
    assert (code, body) == (200, {"repositories": ["a", "b"]})
    assert headers.getRawHeaders("link") == ['</v2/_catalog?n=2&last=b>; rel="next"']


def test_the_manifest_size_is_capped(tmp_path: Path) -> None:
    _, stub = serve(tmp_path, RegistryConfig(max_manifest_size=100))
    code, _, body = call(stub, "PUT", "/v2/a/manifests/t", manifest(3), **{"Content-Type": OCI_MANIFEST})
    assert (code, body["errors"][0]["code"]) == (413, "SIZE_INVALID")


def test_the_references_are_capped(tmp_path: Path) -> None:
    _, stub = serve(tmp_path, RegistryConfig(max_references=2))
    code, _, body = call(stub, "PUT", "/v2/a/manifests/t", manifest(3), **{"Content-Type": OCI_MANIFEST})
    assert (code, body["errors"][0]["code"]) == (400, "MANIFEST_INVALID")
    assert body["errors"][0]["detail"] == {"references": 3, "limit": 2}


class CheckingSource(MemorySource):
    """Like the proxy's origin: the commit checks the digest and refuses a mismatch, storing nothing."""

    async def commit_blob(self, repo: str, digest: Digest, path: str, size: int, upload: str = "") -> None:
        if digest_of_file(path) != digest:
            raise DigestInvalid("the uploaded content does not match the digest")
        await super().commit_blob(repo, digest, path, size)


def digest_of_file(path: str) -> Digest:
    with open(path, "rb") as f:
        return Digest.from_bytes(f.read())


def unhashed(tmp_path: Path) -> tuple[CheckingSource, UploadArea, StubTreq]:
    source = CheckingSource(str(tmp_path / "blobs"))
    uploads = UploadArea(str(tmp_path / "uploads"), InlineWorker(), hashing=False)
    return source, uploads, StubTreq(proxy_api(source, uploads, clock=Clock(), config=RegistryConfig()).resource())


def chunked_push(stub: StubTreq, data: bytes, digest: Digest) -> tuple[int, Any]:
    code, headers, _ = call(stub, "POST", "/v2/a/blobs/uploads/")
    location = headers.getRawHeaders("location")[0]
    half = len(data) // 2
    for start, chunk in ((0, data[:half]), (half, data[half:])):
        code, headers, _ = call(
            stub, "PATCH", location, chunk, **{"Content-Range": f"{start}-{start + len(chunk) - 1}"}
        )
        assert code == 202
    code, _, body = call(stub, "PUT", f"{location}?digest={digest}")
    return code, body


def test_without_running_hashes_the_source_checks_the_digest(tmp_path: Path) -> None:
    source, uploads, stub = unhashed(tmp_path)
    data = b"x" * 5000
    assert chunked_push(stub, data, Digest.from_bytes(data))[0] == 201
    assert source.blobs[Digest.from_bytes(data)] == data

    code, body = chunked_push(stub, b"y" * 5000, Digest.from_bytes(b"z"))
    assert (code, body["errors"][0]["code"]) == (400, "DIGEST_INVALID")
    assert Digest.from_bytes(b"y" * 5000) not in source.blobs and Digest.from_bytes(b"z") not in source.blobs
    assert len(uploads._live) == 0 and len(list((tmp_path / "uploads").iterdir())) == 0


def test_without_running_hashes_a_stored_blob_is_checked_here(tmp_path: Path) -> None:
    source, _, stub = unhashed(tmp_path)
    data = b"x" * 5000
    digest = source.add_blob(data)
    code, body = chunked_push(stub, b"y" * 5000, digest)  # claims to be the stored blob: the commit is skipped
    assert (code, body["errors"][0]["code"]) == (400, "DIGEST_INVALID")
    assert len(list((tmp_path / "uploads").iterdir())) == 0
    assert chunked_push(stub, data, digest)[0] == 201  # the same bytes again: already stored
    assert [c for c, _ in source.calls if c == "commit_blob"] == []
