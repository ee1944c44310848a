"""Errors: invalid names and digests, unknown uploads, unsupported deletes, the error body (spec "Error Codes")."""

from __future__ import annotations

import pytest
import pytest_twisted

from ._registry import (
    API_VERSION,
    API_VERSION_HEADER,
    OCI_MANIFEST,
    Registry,
    assert_error,
    digest_of,
    error_codes,
    random_bytes,
    with_query,
)

INVALID_NAMES = ["UPPER/case", "a//b", "-leading/dash", "trailing-/x", "double..dot"]


@pytest.mark.parametrize("name", INVALID_NAMES)
@pytest_twisted.ensureDeferred
async def test_invalid_repository_name_is_name_invalid(registry: Registry, name: str) -> None:
    for method, path in (
        ("GET", f"/v2/{name}/manifests/latest"),
        ("GET", f"/v2/{name}/tags/list"),
        ("POST", f"/v2/{name}/blobs/uploads/"),
        ("PUT", f"/v2/{name}/manifests/latest"),
    ):
        resp = await registry.request(
            method,
            path,
            body=b"{}" if method == "PUT" else None,
            headers={"Content-Type": OCI_MANIFEST} if method == "PUT" else None,
        )
        assert_error(resp, (400, 404), "NAME_INVALID")


@pytest.mark.parametrize(
    "bad", ["sha256:xyz", "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:" + "0" * 63, "sha256:" + "A" * 64]
)
@pytest_twisted.ensureDeferred
async def test_invalid_digest_is_digest_invalid(registry: Registry, repo: str, bad: str) -> None:
    await registry.push_blob(repo, random_bytes(10))
    resp = await registry.request("GET", f"/v2/{repo}/blobs/{bad}")
    assert_error(resp, (400, 404), "DIGEST_INVALID")

    location = await registry.start_upload(repo)
    put = await registry.request("PUT", with_query(location, digest=bad), body=b"data")
    assert_error(put, 400, "DIGEST_INVALID")

    post = await registry.request(
        "POST", with_query(registry.url(f"/v2/{repo}/blobs/uploads/"), digest=bad), body=b"data"
    )
    assert_error(post, 400, "DIGEST_INVALID")


@pytest_twisted.ensureDeferred
async def test_bogus_upload_id_is_blob_upload_unknown(registry: Registry, repo: str) -> None:
    await registry.push_blob(repo, random_bytes(10))
    url = registry.url(f"/v2/{repo}/blobs/uploads/00000000-not-a-session-0000")
    data = b"abc"
    for method, target, body, headers in (
        ("GET", url, None, {}),
        ("PATCH", url, data, {"Content-Type": "application/octet-stream", "Content-Range": "0-2"}),
        ("PUT", with_query(url, digest=digest_of(data)), data, {"Content-Type": "application/octet-stream"}),
        ("DELETE", url, None, {}),
    ):
        resp = await registry.request(method, target, body=body, headers=headers)
        assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_upload_session_is_bound_to_its_repository(registry: Registry, repo: str, other_repo: str) -> None:
    await registry.push_blob(other_repo, random_bytes(10))
    location = await registry.start_upload(repo)
    foreign = location.replace(f"/v2/{repo}/", f"/v2/{other_repo}/", 1)
    assert foreign != location
    data = random_bytes(100)
    resp = await registry.request("PUT", with_query(foreign, digest=digest_of(data)), body=data)
    assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_deletes_are_unsupported(registry: Registry, repo: str) -> None:
    image = await registry.push_image(repo, "keep")
    for path in (
        f"/v2/{repo}/manifests/keep",
        f"/v2/{repo}/manifests/{image.digest}",
        f"/v2/{repo}/blobs/{digest_of(image.layers[0])}",
    ):
        resp = await registry.request("DELETE", path)
        assert_error(resp, 405, "UNSUPPORTED")
    # Nothing was deleted.
    again = await registry.get_manifest(repo, "keep")
    assert again.status == 200 and again.body == image.manifest, str(again)
    assert await registry.blob_exists(repo, digest_of(image.layers[0]))


@pytest_twisted.ensureDeferred
async def test_error_bodies_and_api_version_header(registry: Registry, repo: str) -> None:
    """Every error body is {"errors":[{"code","message",...}]} and every response has the API version header."""
    responses = [
        await registry.request("GET", f"/v2/{repo}/manifests/none"),
        await registry.request("GET", f"/v2/{repo}/blobs/{digest_of(b'none')}"),
        await registry.request("GET", f"/v2/{repo}/blobs/uploads/nonexistent"),
        await registry.request("GET", "/v2/UPPER/manifests/x"),
        await registry.request("DELETE", f"/v2/{repo}/blobs/{digest_of(b'none')}"),
    ]
    for resp in responses:
        assert resp.status >= 400, str(resp)
        assert error_codes(resp), str(resp)
        assert resp.header(API_VERSION_HEADER) == API_VERSION
