"""The API as a whole (``kraken.registry.http``): the base endpoint, dispatch, error rendering, read-only
mode, unexpected failures and cancellation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import capturedLogs
from twisted.web.test.requesthelper import DummyRequest

from kraken.core import Digest
from kraken.registry.http import RegistryAPI
from kraken.registry.manifests import OCI_MANIFEST

from .conftest import Registry, parse_wire
from .memory import MemorySource

D = Digest.from_bytes(b"x")


def test_base(registry: Registry) -> None:
    r = registry.get("/v2/")
    assert (r.code, r.json()) == (200, {})
    assert r.header("Docker-Distribution-API-Version") == "registry/2.0"
    assert r.header("Content-Type") == "application/json"
    assert registry.head("/v2/").code == 200
    assert registry.get("/v2").code == 200


def test_health(registry: Registry, read_only: Registry) -> None:
    for reg in (registry, read_only):
        r = reg.get("/health")
        assert (r.code, r.body) == (200, b"OK\n")
    assert registry.get("/healthz").code == 404, "only the exact path"


@pytest.mark.parametrize("path", ["/v2/a", "/v2/a/b/c", "/v2/a/blobs", "/", "/v2/tags/list"])
def test_unknown_endpoints(registry: Registry, path: str) -> None:
    r = registry.get(path)
    assert r.code == 404
    assert r.header("Content-Type") == "application/json"
    assert r.header("Docker-Distribution-API-Version") == "registry/2.0"
    assert r.error_code == "UNSUPPORTED"


def test_encoded_slash_in_name(registry: Registry) -> None:
    registry.source.add_repo("a/b")
    assert registry.get("/v2/a/b/tags/list").code == 200
    r = registry.get("/v2/a%2Fb/tags/list")
    assert (r.code, r.error_code) == (400, "NAME_INVALID")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/v2/", "GET, HEAD"),
        ("PUT", "/v2/a/tags/list", "GET, HEAD"),
        ("POST", f"/v2/a/blobs/{D}", "GET, HEAD, DELETE"),
        ("GET", "/v2/a/blobs/uploads/", "POST"),
        ("POST", "/v2/a/manifests/t", "GET, HEAD, PUT, DELETE"),
        ("DELETE", f"/v2/a/referrers/{D}", "GET, HEAD"),
    ],
)
def test_method_not_allowed(registry: Registry, method: str, path: str, allow: str) -> None:
    r = registry.request(method, path)
    assert (r.code, r.error_code) == (405, "UNSUPPORTED")
    assert r.header("Allow") == allow


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", f"/v2/a/blobs/{D}", 404, "BLOB_UNKNOWN"),
        ("GET", "/v2/a/blobs/sha256:0", 400, "DIGEST_INVALID"),
        ("GET", "/v2/A/tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2/a/tags/list", 404, "NAME_UNKNOWN"),
        ("GET", "/v2/a/manifests/t", 404, "MANIFEST_UNKNOWN"),
        ("PUT", "/v2/a/manifests/t", 400, "MANIFEST_INVALID"),
        ("GET", "/v2/a/blobs/uploads/x", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("DELETE", "/v2/a/manifests/t", 405, "UNSUPPORTED"),
        ("GET", "/v2/_catalog?n=-1", 400, "PAGINATION_NUMBER_INVALID"),
    ],
)
def test_error_shape(registry: Registry, method: str, path: str, status: int, code: str) -> None:
    r = registry.request(method, path, body=b"nope" if method == "PUT" else None)
    assert r.code == status
    assert r.header("Docker-Distribution-API-Version") == "registry/2.0"
    assert r.header("Content-Type") == "application/json"
    doc = r.json()
    assert list(doc) == ["errors"]
    (entry,) = doc["errors"]
    assert entry["code"] == code
    assert isinstance(entry["message"], str) and entry["message"]
    assert set(entry) <= {"code", "message", "detail"}


def test_error_wire_format(registry: Registry) -> None:
    status, headers, body = parse_wire(registry.raw(f"GET /v2/a/blobs/{D} HTTP/1.1\r\nHost: r\r\n\r\n".encode()))
    assert status == 404
    assert headers["content-length"] == str(len(body))
    assert headers["docker-distribution-api-version"] == "registry/2.0"


# -- read-only ---------------------------------------------------------------------------


@pytest.fixture
def read_only(make_registry: Any) -> Registry:
    reg = make_registry(read_only=True, with_uploads=False, read_only_message="agents are read-only")
    return reg


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/a/blobs/uploads/"),
        ("POST", f"/v2/a/blobs/uploads/?digest={D}"),
        ("POST", f"/v2/a/blobs/uploads/?mount={D}"),
        ("PATCH", "/v2/a/blobs/uploads/0123456789abcdef0123456789abcdef"),
        ("PUT", f"/v2/a/blobs/uploads/0123456789abcdef0123456789abcdef?digest={D}"),
        ("DELETE", "/v2/a/blobs/uploads/0123456789abcdef0123456789abcdef"),
        ("PUT", "/v2/a/manifests/t"),
        ("DELETE", "/v2/a/manifests/t"),
        ("DELETE", f"/v2/a/blobs/{D}"),
        ("POST", "/v2/"),
        ("PUT", "/v2/nowhere"),
    ],
)
def test_read_only_refuses_writes(read_only: Registry, method: str, path: str) -> None:
    r = read_only.request(method, path, body=b"x")
    assert (r.code, r.error_code) == (405, "UNSUPPORTED")
    assert r.json()["errors"][0]["message"] == "agents are read-only"
    assert r.header("Docker-Distribution-API-Version") == "registry/2.0"
    assert [c for c in read_only.source.calls if c[0] in ("commit_blob", "put_manifest")] == []


def test_read_only_serves_reads(read_only: Registry) -> None:
    d = read_only.source.add_blob(b"layer")
    assert read_only.get(f"/v2/a/blobs/{d}").body == b"layer"
    read_only.source.add_repo("a")
    assert read_only.get("/v2/a/tags/list").code == 200
    assert read_only.get("/v2/_catalog").code == 200
    assert read_only.get(f"/v2/a/referrers/{D}").code == 200
    assert read_only.get("/v2/a/blobs/uploads/0123456789abcdef0123456789abcdef").code == 404
    assert read_only.get("/v2/").code == 200


def test_writable_registry_needs_uploads(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        RegistryAPI(MemorySource(str(tmp_path)), None, clock=task.Clock())


# -- failures -------------------------------------------------------------------------------


class Exploding(MemorySource):
    async def list_repositories(self, n: int | None, last: str | None) -> Any:
        raise RuntimeError("database on fire")

    async def stat_blob(self, repo: str, digest: Digest) -> int | None:
        raise OSError("disk on fire")

    async def stat_blobs(self, repo: str, digests: list[Digest]) -> dict[Digest, int | None]:
        raise OSError("disk on fire")


def test_unexpected_error_is_500_json_and_logged(tmp_path: Path, clock: task.Clock) -> None:
    reg = Registry(tmp_path, clock)
    reg.source.__class__ = Exploding
    with capturedLogs() as events:
        r = reg.get("/v2/_catalog")
    assert r.code == 500
    assert r.error_code == "UNKNOWN"
    assert r.header("Docker-Distribution-API-Version") == "registry/2.0"
    assert "database on fire" not in r.body.decode()
    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)
    assert failures[0]["method"] == "GET"
    assert failures[0]["path"] == "/v2/_catalog"


def test_failure_inside_gathered_lookups(tmp_path: Path, clock: task.Clock) -> None:
    reg = Registry(tmp_path, clock)
    reg.source.__class__ = Exploding
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(D), "size": 1},
        "layers": [],
    }
    with capturedLogs() as events:
        r = reg.put_manifest("a", "t", doc, OCI_MANIFEST)
    assert (r.code, r.error_code) == (500, "UNKNOWN")
    (failure,) = [e["log_failure"] for e in events if e.get("log_failure") is not None]
    assert failure.check(OSError)


class Hanging(MemorySource):
    def __init__(self, blob_dir: str) -> None:
        super().__init__(blob_dir)
        self.pending: Deferred[Any] = Deferred()

    async def list_tags(self, repo: str, n: int | None, last: str | None) -> Any:
        return await self.pending


def test_cancellation_propagates(tmp_path: Path, clock: task.Clock) -> None:
    source = Hanging(str(tmp_path / "blobs"))
    api = RegistryAPI(source, None, clock=clock, read_only=True)
    request = DummyRequest([b"v2", b"a", b"tags", b"list"])
    request.path = b"/v2/a/tags/list"
    with capturedLogs() as events:
        d = Deferred.fromCoroutine(api._root(request))
        assert not d.called
        d.cancel()
        failures: list[Any] = []
        d.addErrback(failures.append)
    assert failures and failures[0].check(CancelledError)
    assert source.pending.called  # the source's own Deferred was cancelled too
    assert not [e for e in events if e.get("log_failure") is not None]
