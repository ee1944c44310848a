"""Push: blob uploads in every form the spec allows, and how they fail.

Spec "Push": end-4..end-6, end-11, end-13, end-14.
"""

from __future__ import annotations

import re

import pytest_twisted

from ._registry import (
    EMPTY_DIGEST,
    Registry,
    Response,
    StreamingBody,
    assert_error,
    digest_of,
    random_bytes,
    raw_exchange,
    request_target,
    unknown_digest,
    with_query,
)

OCTETS = {"Content-Type": "application/octet-stream"}


def assert_range(resp: Response, end: int) -> None:
    """``Range: 0-<end>``: the last byte received so far, inclusive, no unit (the spec; distribution writes it too)."""
    assert resp.header("Range") == f"0-{end}", f"{resp}: Range is {resp.header('Range')!r}, expected '0-{end}'"


async def assert_blob(registry: Registry, repo: str, data: bytes) -> None:
    resp = await registry.request("GET", f"/v2/{repo}/blobs/{digest_of(data)}")
    assert resp.status == 200, str(resp)
    assert resp.body == data
    assert resp.header("Docker-Content-Digest") == digest_of(data)


@pytest_twisted.ensureDeferred
async def test_monolithic_post_then_put(registry: Registry, repo: str) -> None:
    data = random_bytes(100_000)
    post = await registry.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert post.status == 202, str(post)
    location = post.location()

    put = await registry.request("PUT", with_query(location, digest=digest_of(data)), body=data, headers=OCTETS)
    assert put.status == 201, str(put)
    assert put.header("Docker-Content-Digest") == digest_of(data)
    assert put.header("Location"), str(put)
    fetched = await registry.request("GET", put.location())
    assert fetched.status == 200 and fetched.body == data, str(fetched)
    await assert_blob(registry, repo, data)
    # A finished session is gone.
    assert_error(await registry.request("GET", location), 404, "BLOB_UPLOAD_UNKNOWN")
    again = await registry.request("PUT", with_query(location, digest=digest_of(data)), body=data, headers=OCTETS)
    assert_error(again, 404, "BLOB_UPLOAD_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_single_post_with_digest(registry: Registry, repo: str) -> None:
    data = random_bytes(50_000)
    resp = await registry.request(
        "POST",
        with_query(registry.url(f"/v2/{repo}/blobs/uploads/"), digest=digest_of(data)),
        body=data,
        headers=OCTETS,
    )
    # The spec lets a registry take the blob (201) or open a session instead (202) and expect a PUT.
    assert resp.status in (201, 202), str(resp)
    if resp.status == 202:
        put = await registry.request(
            "PUT", with_query(resp.location(), digest=digest_of(data)), body=data, headers=OCTETS
        )
        assert put.status == 201, str(put)
    else:
        assert resp.header("Docker-Content-Digest") == digest_of(data)
        assert resp.header("Location"), str(resp)
    await assert_blob(registry, repo, data)


@pytest_twisted.ensureDeferred
async def test_chunked_upload_with_content_range(registry: Registry, repo: str) -> None:
    data = random_bytes(300_000)
    chunks = [data[:100_000], data[100_000:250_000], data[250_000:]]
    location = await registry.start_upload(repo)
    offset = 0
    for chunk in chunks:
        end = offset + len(chunk) - 1
        resp = await registry.request(
            "PATCH",
            location,
            body=chunk,
            headers={**OCTETS, "Content-Range": f"{offset}-{end}"},
        )
        assert resp.status == 202, str(resp)
        assert_range(resp, end)
        location = resp.location()
        offset = end + 1

    status = await registry.request("GET", location)
    assert status.status == 204, str(status)
    assert_range(status, len(data) - 1)
    assert status.header("Location"), str(status)

    put = await registry.request("PUT", with_query(location, digest=digest_of(data)))
    assert put.status == 201, str(put)
    assert put.header("Docker-Content-Digest") == digest_of(data)
    await assert_blob(registry, repo, data)


@pytest_twisted.ensureDeferred
async def test_chunked_upload_with_last_chunk_in_put(registry: Registry, repo: str) -> None:
    data = random_bytes(20_000)
    location = await registry.start_upload(repo)
    resp = await registry.request("PATCH", location, body=data[:12_000], headers={**OCTETS, "Content-Range": "0-11999"})
    assert resp.status == 202, str(resp)
    assert_range(resp, 11_999)
    put = await registry.request(
        "PUT",
        with_query(resp.location(), digest=digest_of(data)),
        body=data[12_000:],
        headers={**OCTETS, "Content-Range": f"12000-{len(data) - 1}"},
    )
    assert put.status == 201, str(put)
    await assert_blob(registry, repo, data)


@pytest_twisted.ensureDeferred
async def test_streamed_patch_without_content_range(registry: Registry, repo: str) -> None:
    """Docker and containerd PATCH with no Content-Range and a chunked body ("stream" in the upstream suite)."""
    data = random_bytes(70_000)
    location = await registry.start_upload(repo)
    first = await registry.request(
        "PATCH", location, body=StreamingBody([data[:1000], data[1000:40_000]]), headers=OCTETS
    )
    assert first.status == 202, str(first)
    assert_range(first, 39_999)
    second = await registry.request("PATCH", first.location(), body=StreamingBody([data[40_000:]]), headers=OCTETS)
    assert second.status == 202, str(second)
    assert_range(second, len(data) - 1)
    put = await registry.request("PUT", with_query(second.location(), digest=digest_of(data)))
    assert put.status == 201, str(put)
    await assert_blob(registry, repo, data)


@pytest_twisted.ensureDeferred
async def test_upload_status(registry: Registry, repo: str) -> None:
    location = await registry.start_upload(repo)
    fresh = await registry.request("GET", location)
    assert fresh.status == 204, str(fresh)
    assert fresh.header("Location"), str(fresh)
    assert fresh.body == b""

    resp = await registry.request("PATCH", location, body=b"x" * 100, headers={**OCTETS, "Content-Range": "0-99"})
    assert resp.status == 202, str(resp)
    status = await registry.request("GET", resp.location())
    assert status.status == 204, str(status)
    assert_range(status, 99)


@pytest_twisted.ensureDeferred
async def test_out_of_order_chunk_is_416(registry: Registry, repo: str) -> None:
    data = random_bytes(300)
    location = await registry.start_upload(repo)
    first = await registry.request("PATCH", location, body=data[:100], headers={**OCTETS, "Content-Range": "0-99"})
    assert first.status == 202, str(first)
    location = first.location()

    # A gap: the next chunk must start at 100.
    gap = await registry.request("PATCH", location, body=data[200:], headers={**OCTETS, "Content-Range": "200-299"})
    assert gap.status == 416, str(gap)
    status = await registry.request("GET", location)
    assert status.status == 204, str(status)
    assert_range(status, 99)

    # A repeat of what the registry already has is out of order too.
    again = await registry.request("PATCH", location, body=data[:100], headers={**OCTETS, "Content-Range": "0-99"})
    assert again.status == 416, str(again)
    status = await registry.request("GET", location)
    assert status.status == 204, str(status)
    assert_range(status, 99)

    # The session survives: the right chunk still goes on, and the blob is exactly the in-order bytes.
    good = await registry.request("PATCH", location, body=data[100:], headers={**OCTETS, "Content-Range": "100-299"})
    assert good.status == 202, str(good)
    assert_range(good, 299)
    put = await registry.request("PUT", with_query(good.location(), digest=digest_of(data)))
    assert put.status == 201, str(put)
    await assert_blob(registry, repo, data)


@pytest_twisted.ensureDeferred
async def test_chunk_shorter_than_its_content_range_is_refused(registry: Registry, repo: str) -> None:
    data = random_bytes(100)
    location = await registry.start_upload(repo)
    resp = await registry.request("PATCH", location, body=data[:50], headers={**OCTETS, "Content-Range": "0-99"})
    assert resp.status in (400, 416), str(resp)
    if resp.status == 400:
        assert_error(resp, 400, ("SIZE_INVALID", "BLOB_UPLOAD_INVALID"))
    status = await registry.request("GET", location)
    assert status.status == 204, str(status)
    assert status.header("Range") in (None, "0-0"), f"{status}: the refused chunk was kept"


@pytest_twisted.ensureDeferred
async def test_put_without_a_digest_is_refused(registry: Registry, repo: str) -> None:
    location = await registry.start_upload(repo)
    resp = await registry.request("PUT", location, body=b"data", headers=OCTETS)
    assert_error(resp, 400, ("DIGEST_INVALID", "BLOB_UPLOAD_INVALID"))
    assert not await registry.blob_exists(repo, digest_of(b"data"))


@pytest_twisted.ensureDeferred
async def test_cancel_upload(registry: Registry, repo: str) -> None:
    data = random_bytes(1000)
    location = await registry.start_upload(repo)
    resp = await registry.request("PATCH", location, body=data, headers={**OCTETS, "Content-Range": "0-999"})
    assert resp.status == 202, str(resp)
    location = resp.location()

    cancel = await registry.request("DELETE", location)
    assert cancel.status == 204, str(cancel)
    assert_error(await registry.request("GET", location), 404, "BLOB_UPLOAD_UNKNOWN")
    put = await registry.request("PUT", with_query(location, digest=digest_of(data)))
    assert_error(put, 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(await registry.request("DELETE", location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert not await registry.blob_exists(repo, digest_of(data))


@pytest_twisted.ensureDeferred
async def test_cross_repository_mount(registry: Registry, repo: str, other_repo: str) -> None:
    data = random_bytes(5000)
    digest = await registry.push_blob(other_repo, data)
    resp = await registry.request(
        "POST", with_query(registry.url(f"/v2/{repo}/blobs/uploads/"), mount=digest, **{"from": other_repo})
    )
    assert resp.status == 201, str(resp)
    assert resp.header("Docker-Content-Digest") == digest
    location = resp.location()
    assert location.endswith(f"/v2/{repo}/blobs/{digest}"), location
    await assert_blob(registry, repo, data)


@pytest_twisted.ensureDeferred
async def test_mount_of_an_unknown_blob_opens_an_upload_session(registry: Registry, repo: str, other_repo: str) -> None:
    await registry.push_blob(other_repo, random_bytes(10))  # the source repository exists
    data = random_bytes(3000)
    digest = digest_of(data)  # nobody pushed it
    resp = await registry.request(
        "POST", with_query(registry.url(f"/v2/{repo}/blobs/uploads/"), mount=digest, **{"from": other_repo})
    )
    assert resp.status == 202, str(resp)
    put = await registry.request("PUT", with_query(resp.location(), digest=digest), body=data, headers=OCTETS)
    assert put.status == 201, str(put)
    await assert_blob(registry, repo, data)


@pytest_twisted.ensureDeferred
async def test_empty_blob(registry: Registry, repo: str) -> None:
    location = await registry.start_upload(repo)
    put = await registry.request("PUT", with_query(location, digest=EMPTY_DIGEST), body=b"", headers=OCTETS)
    assert put.status == 201, str(put)
    assert put.header("Docker-Content-Digest") == EMPTY_DIGEST
    resp = await registry.request("GET", f"/v2/{repo}/blobs/{EMPTY_DIGEST}")
    assert resp.status == 200, str(resp)
    assert resp.body == b""
    head = await registry.request("HEAD", f"/v2/{repo}/blobs/{EMPTY_DIGEST}")
    assert head.status == 200 and head.header("Content-Length") == "0", str(head)


@pytest_twisted.ensureDeferred
async def test_wrong_digest_at_finalize_is_digest_invalid(registry: Registry, repo: str) -> None:
    data = random_bytes(4000)
    claimed = unknown_digest()

    location = await registry.start_upload(repo)
    put = await registry.request("PUT", with_query(location, digest=claimed), body=data, headers=OCTETS)
    assert_error(put, 400, "DIGEST_INVALID")

    # Chunked, then a PUT with the wrong digest.
    location = await registry.start_upload(repo)
    patch = await registry.request("PATCH", location, body=data, headers={**OCTETS, "Content-Range": "0-3999"})
    assert patch.status == 202, str(patch)
    put = await registry.request("PUT", with_query(patch.location(), digest=claimed))
    assert_error(put, 400, "DIGEST_INVALID")

    for digest in (claimed, digest_of(data)):
        assert not await registry.blob_exists(repo, digest), f"{digest} was stored"
        resp = await registry.request("GET", f"/v2/{repo}/blobs/{digest}")
        assert_error(resp, 404, "BLOB_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_put_with_a_body_shorter_than_content_length_stores_nothing(
    registry: Registry, repo: str, reactor
) -> None:  # type: ignore[no-untyped-def]
    """A client that dies mid-body: Content-Length 2000, 1000 bytes, end of stream."""
    data = random_bytes(2000)
    sent = data[:1000]
    location = await registry.start_upload(repo)
    host = location.split("/")[2]
    # Claim the digest of what is actually sent: a registry that finalized the short body would accept it.
    for claimed in (digest_of(sent), digest_of(data)):
        head = (
            f"PUT {request_target(with_query(location, digest=claimed))} HTTP/1.1\r\n"
            f"Host: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        answer = await raw_exchange(reactor, location, head, sent)
        m = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
        assert m is None or not m.group(1).startswith(b"2"), f"a truncated PUT was answered {answer[:200]!r}"
        assert not await registry.blob_exists(repo, digest_of(sent)), "the truncated body was stored"
        assert not await registry.blob_exists(repo, digest_of(data)), "a blob was stored from a truncated body"

    # The session (if the registry kept it) holds none of the truncated bytes: finishing it properly works.
    status = await registry.request("GET", location)
    if status.status == 204:
        assert status.header("Range") in (None, "0-0"), f"{status}: truncated bytes were kept"
        put = await registry.request("PUT", with_query(location, digest=digest_of(data)), body=data, headers=OCTETS)
        assert put.status == 201, str(put)
        await assert_blob(registry, repo, data)
    else:
        assert_error(status, 404, ("BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"))


@pytest_twisted.ensureDeferred
async def test_patch_with_a_body_shorter_than_content_length_keeps_nothing(
    registry: Registry, repo: str, reactor
) -> None:  # type: ignore[no-untyped-def]
    data = random_bytes(1000)
    location = await registry.start_upload(repo)
    first = await registry.request("PATCH", location, body=data[:500], headers={**OCTETS, "Content-Range": "0-499"})
    assert first.status == 202, str(first)
    location = first.location()
    host = location.split("/")[2]
    head = (
        f"PATCH {request_target(location)} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Range: 500-999\r\nContent-Length: 500\r\n\r\n"
    )
    answer = await raw_exchange(reactor, location, head, data[500:800])
    m = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    assert m is None or not m.group(1).startswith(b"2"), f"a truncated PATCH was answered {answer[:200]!r}"

    status = await registry.request("GET", location)
    assert status.status == 204, str(status)
    assert_range(status, 499)  # the 300 bytes of the broken request are not part of the upload
    resp = await registry.request("PATCH", location, body=data[500:], headers={**OCTETS, "Content-Range": "500-999"})
    assert resp.status == 202, str(resp)
    put = await registry.request("PUT", with_query(resp.location(), digest=digest_of(data)))
    assert put.status == 201, str(put)
    await assert_blob(registry, repo, data)
