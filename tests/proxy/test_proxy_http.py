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
