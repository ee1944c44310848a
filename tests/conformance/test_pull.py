"""Pull: the API root, manifests by tag and by digest, HEAD, blobs and ranges (spec "Pull", end-1..end-3)."""

from __future__ import annotations

import pytest
import pytest_twisted

from ._registry import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    Registry,
    assert_error,
    digest_of,
    random_bytes,
    unknown_digest,
)


@pytest_twisted.ensureDeferred
async def test_api_root_answers_200(registry: Registry) -> None:
    resp = await registry.request("GET", "/v2/")
    assert resp.status == 200, str(resp)
    # The API version header is checked on every response by Registry.request.


@pytest_twisted.ensureDeferred
async def test_manifest_by_tag_and_by_digest_returns_exact_bytes(registry: Registry, repo: str) -> None:
    image = await registry.push_image(repo, "v1")
    for reference in ("v1", image.digest):
        resp = await registry.get_manifest(repo, reference)
        assert resp.status == 200, str(resp)
        assert resp.body == image.manifest
        assert resp.header("Docker-Content-Digest") == image.digest
        assert resp.header("Content-Type") == OCI_MANIFEST
        assert resp.header("Content-Length") == str(len(image.manifest))


@pytest_twisted.ensureDeferred
async def test_manifest_head_has_digest_and_length(registry: Registry, repo: str) -> None:
    image = await registry.push_image(repo, "head")
    for reference in ("head", image.digest):
        resp = await registry.request("HEAD", f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        assert resp.status == 200, str(resp)
        assert resp.body == b""
        assert resp.header("Docker-Content-Digest") == image.digest
        assert resp.header("Content-Length") == str(len(image.manifest))
        assert resp.header("Content-Type") == OCI_MANIFEST


@pytest_twisted.ensureDeferred
async def test_unknown_manifest_is_404_manifest_unknown(registry: Registry, repo: str) -> None:
    await registry.push_image(repo, "exists")
    for reference in ("nope", unknown_digest()):
        resp = await registry.get_manifest(repo, reference)
        assert_error(resp, 404, "MANIFEST_UNKNOWN")
        head = await registry.request("HEAD", f"/v2/{repo}/manifests/{reference}")
        assert_error(head, 404, "MANIFEST_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_manifest_of_a_repository_nobody_pushed_is_404(registry: Registry, repo: str) -> None:
    resp = await registry.get_manifest(repo, "latest")
    assert_error(resp, 404, ("NAME_UNKNOWN", "MANIFEST_UNKNOWN"))


@pytest_twisted.ensureDeferred
async def test_docker_schema2_manifest_pulls_with_its_own_content_type(registry: Registry, repo: str) -> None:
    image = await registry.push_image(repo, "docker", media_type=DOCKER_MANIFEST)
    resp = await registry.get_manifest(repo, "docker")
    assert resp.status == 200, str(resp)
    assert resp.header("Content-Type") == DOCKER_MANIFEST
    assert resp.body == image.manifest
    assert resp.header("Docker-Content-Digest") == image.digest


@pytest_twisted.ensureDeferred
async def test_blob_get_and_head(registry: Registry, repo: str) -> None:
    data = random_bytes(10_000)
    digest = await registry.push_blob(repo, data)

    resp = await registry.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert resp.status == 200, str(resp)
    assert resp.body == data
    assert resp.header("Docker-Content-Digest") == digest

    head = await registry.request("HEAD", f"/v2/{repo}/blobs/{digest}")
    assert head.status == 200, str(head)
    assert head.body == b""
    assert head.header("Content-Length") == str(len(data))
    assert head.header("Docker-Content-Digest") == digest


@pytest_twisted.ensureDeferred
async def test_missing_blob_is_404_blob_unknown(registry: Registry, repo: str) -> None:
    await registry.push_blob(repo, random_bytes(100))  # the repository exists, this blob does not
    missing = unknown_digest()
    resp = await registry.request("GET", f"/v2/{repo}/blobs/{missing}")
    assert_error(resp, 404, "BLOB_UNKNOWN")
    head = await registry.request("HEAD", f"/v2/{repo}/blobs/{missing}")
    assert_error(head, 404, "BLOB_UNKNOWN")


@pytest.mark.parametrize(
    "size, range_header, expected_length",
    [(10_000, None, 10_000), (2048, "bytes=500-1499", 1000), (0, None, 0)],
    ids=["whole", "range", "empty"],
)
@pytest_twisted.ensureDeferred
async def test_blob_get_carries_content_length(
    registry: Registry, repo: str, size: int, range_header: str | None, expected_length: int
) -> None:
    """Docker's API documents Content-Length on blob GET (200 and 206); clients size their reads by it."""
    data = random_bytes(size)
    digest = await registry.push_blob(repo, data)
    resp = await registry.request(
        "GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": range_header} if range_header else None
    )
    assert resp.status in (200, 206), str(resp)
    assert len(resp.body) == expected_length
    assert resp.header("Content-Length") == str(expected_length), (
        f"{resp}: no Content-Length (chunked?) on a blob GET; headers {dict(resp.headers.getAllRawHeaders())}"
    )


RANGE_BLOB_SIZE = 2048


@pytest.mark.parametrize(
    "range_header, first, last",
    [
        ("bytes=500-1499", 500, 1499),
        ("bytes=500-", 500, RANGE_BLOB_SIZE - 1),
        ("bytes=-500", RANGE_BLOB_SIZE - 500, RANGE_BLOB_SIZE - 1),
        ("bytes=2000-5000", 2000, RANGE_BLOB_SIZE - 1),  # the end is clipped to the blob
        ("bytes=0-0", 0, 0),
    ],
)
@pytest_twisted.ensureDeferred
async def test_blob_range_request(registry: Registry, repo: str, range_header: str, first: int, last: int) -> None:
    data = random_bytes(RANGE_BLOB_SIZE)
    digest = await registry.push_blob(repo, data)
    resp = await registry.request("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": range_header})
    assert resp.status == 206, str(resp)
    assert resp.body == data[first : last + 1]
    assert resp.header("Content-Range") == f"bytes {first}-{last}/{RANGE_BLOB_SIZE}"


@pytest.mark.parametrize("range_header", ["bytes=500-0", "bytes=5000-10000", "bytes=2048-", "bytes=-0"])
@pytest_twisted.ensureDeferred
async def test_invalid_or_unsatisfiable_range_is_416(registry: Registry, repo: str, range_header: str) -> None:
    data = random_bytes(RANGE_BLOB_SIZE)
    digest = await registry.push_blob(repo, data)
    resp = await registry.request("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": range_header})
    assert resp.status == 416, str(resp)
    content_range = resp.header("Content-Range")
    assert content_range in (None, f"bytes */{RANGE_BLOB_SIZE}"), content_range
    # The blob is still served whole without the header.
    whole = await registry.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert whole.status == 200 and digest_of(whole.body) == digest, str(whole)
