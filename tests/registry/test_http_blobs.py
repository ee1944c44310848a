"""Blob pulls through the HTTP API (``kraken.registry.http_blobs``)."""

from __future__ import annotations

import pytest

from kraken.core import Digest

from .conftest import Registry

DATA = bytes(range(256)) * 40  # 10 KiB


def test_get_and_head_blob(registry: Registry) -> None:
    d = registry.source.add_blob(DATA)
    r = registry.get(f"/v2/library/ubuntu/blobs/{d}")
    assert r.code == 200
    assert r.body == DATA
    assert r.header("Docker-Content-Digest") == str(d)
    assert r.header("Content-Type") == "application/octet-stream"
    assert r.header("Docker-Distribution-API-Version") == "registry/2.0"
    h = registry.head(f"/v2/library/ubuntu/blobs/{d}")
    assert (h.code, h.body) == (200, b"")
    assert h.header("Content-Length") == str(len(DATA))
    assert h.header("Docker-Content-Digest") == str(d)


def test_blob_ranges(registry: Registry) -> None:
    d = registry.source.add_blob(DATA)
    r = registry.get(f"/v2/a/blobs/{d}", headers={"Range": "bytes=500-1499"})
    assert r.code == 206
    assert r.body == DATA[500:1500]
    assert r.header("Content-Range") == f"bytes 500-1499/{len(DATA)}"
    r = registry.get(f"/v2/a/blobs/{d}", headers={"Range": "bytes=-500"})
    assert (r.code, r.body) == (206, DATA[-500:])
    r = registry.get(f"/v2/a/blobs/{d}", headers={"Range": f"bytes={len(DATA) + 10}-{len(DATA) + 20}"})
    assert r.code == 416
    assert r.header("Content-Range") == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("value", ["bytes=500-0", "bytes=0-10, 20-5", "BYTES = 9 - 1"])
def test_backwards_blob_range(registry: Registry, value: str) -> None:
    d = registry.source.add_blob(DATA)
    r = registry.get(f"/v2/a/blobs/{d}", headers={"Range": value})
    assert (r.code, r.error_code) == (416, "RANGE_INVALID")
    assert r.header("Content-Range") == f"bytes */{len(DATA)}"
    assert r.header("Docker-Content-Digest") is None
    # other odd ranges are the resource's business (RFC 9110: ignore them)
    assert registry.get(f"/v2/a/blobs/{d}", headers={"Range": "items=1-0"}).code == 200


def test_percent_encoded_digest(registry: Registry) -> None:
    d = registry.source.add_blob(DATA)
    r = registry.get(f"/v2/a/blobs/sha256%3A{d.hex}")
    assert (r.code, r.body) == (200, DATA)


def test_blob_unknown(registry: Registry) -> None:
    r = registry.get(f"/v2/a/blobs/{Digest.from_bytes(b'nope')}")
    assert (r.code, r.error_code) == (404, "BLOB_UNKNOWN")
    h = registry.head(f"/v2/a/blobs/{Digest.from_bytes(b'nope')}")
    assert h.code == 404
    assert h.header("Docker-Distribution-API-Version") == "registry/2.0"


@pytest.mark.parametrize("digest", ["sha256:abc", "md5:" + "a" * 32, "sha256:" + "A" * 64, "latest", "sha256%3Azz"])
def test_blob_digest_invalid(registry: Registry, digest: str) -> None:
    r = registry.get(f"/v2/a/blobs/{digest}")
    assert (r.code, r.error_code) == (400, "DIGEST_INVALID")


def test_blob_name_invalid(registry: Registry) -> None:
    d = registry.source.add_blob(DATA)
    r = registry.get(f"/v2/Bad_Name/blobs/{d}")
    assert (r.code, r.error_code) == (400, "NAME_INVALID")


def test_blob_delete_unsupported(registry: Registry) -> None:
    d = registry.source.add_blob(DATA)
    r = registry.request("DELETE", f"/v2/a/blobs/{d}")
    assert (r.code, r.error_code) == (405, "UNSUPPORTED")
    assert d in registry.source.blobs
