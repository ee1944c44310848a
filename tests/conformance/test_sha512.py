"""sha512: the upstream suite's "sha512 blobs" group and its "sha512" and "tag-param-sha512" data, through the
proxy, and the pulls again through an agent.

Every digest here is ``sha512:<128 hex>``: blobs pushed every way the spec allows (and refused the same ways as
sha256 ones), ranges, an index of images whose every reference is sha512 pushed by digest, tags given as
``?tag=`` on a push by digest, referrers of a sha512 manifest, and a pull of the same content from an agent,
which fetches it peer to peer and checks the whole blob's SHA-512 before it serves it.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import pytest_twisted

from ._registry import (
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Registry,
    StreamingBody,
    assert_error,
    digest_of,
    dumps,
    make_image,
    make_index,
    random_bytes,
    unknown_digest,
    with_query,
)

OCTETS = {"Content-Type": "application/octet-stream"}
SHA512 = "sha512"


def sha512_of(data: bytes) -> str:
    return digest_of(data, SHA512)


async def assert_blob(registry: Registry, repo: str, data: bytes) -> None:
    digest = sha512_of(data)
    resp = await registry.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert resp.status == 200 and resp.body == data, str(resp)
    assert resp.header("Docker-Content-Digest") == digest
    head = await registry.request("HEAD", f"/v2/{repo}/blobs/{digest}")
    assert head.status == 200 and head.header("Content-Length") == str(len(data)), str(head)
    assert head.header("Docker-Content-Digest") == digest


def uploads(registry: Registry, repo: str) -> str:
    return registry.url(f"/v2/{repo}/blobs/uploads/")


# ---- blobs


@pytest_twisted.ensureDeferred
async def test_get_missing(registry: Registry, repo: str) -> None:
    await registry.push_blob(repo, random_bytes(10), SHA512)
    missing = unknown_digest(SHA512)
    assert_error(await registry.request("GET", f"/v2/{repo}/blobs/{missing}"), 404, "BLOB_UNKNOWN")
    assert_error(await registry.request("HEAD", f"/v2/{repo}/blobs/{missing}"), 404, "BLOB_UNKNOWN")


async def finish(registry: Registry, repo: str, location: str, data: bytes, tail: int | None = None) -> None:
    """PUT ``?digest=sha512:...`` to end the upload at ``location`` (with ``data[tail:]`` as its last chunk, or
    the whole of ``data`` when ``tail`` is 0), then check the blob is there under its sha512."""
    headers: dict[str, str] = {}
    if tail is not None:
        headers = {**OCTETS, "Content-Range": f"{tail}-{len(data) - 1}"} if tail else OCTETS
    body = None if tail is None else data[tail:]
    put = await registry.request("PUT", with_query(location, digest=sha512_of(data)), body=body, headers=headers)
    assert put.status == 201 and put.header("Docker-Content-Digest") == sha512_of(data), str(put)
    assert put.location().endswith(f"/v2/{repo}/blobs/{sha512_of(data)}"), put.location()
    await assert_blob(registry, repo, data)


async def patch(registry: Registry, location: str, data: bytes, first: int, end: int) -> str:
    """PATCH ``data[first:end]`` with its Content-Range; the next location."""
    resp = await registry.request(
        "PATCH", location, body=data[first:end], headers={**OCTETS, "Content-Range": f"{first}-{end - 1}"}
    )
    assert resp.status == 202 and resp.header("Range") == f"0-{end - 1}", str(resp)
    return resp.location()


@pytest_twisted.ensureDeferred
async def test_post_only(registry: Registry, repo: str) -> None:
    data = random_bytes(512)
    url = with_query(uploads(registry, repo), digest=sha512_of(data))
    resp = await registry.request("POST", url, body=data, headers=OCTETS)
    assert resp.status in (201, 202), str(resp)
    if resp.status == 202:
        await finish(registry, repo, resp.location(), data, 0)
    else:
        assert resp.header("Docker-Content-Digest") == sha512_of(data)
        await assert_blob(registry, repo, data)


@pytest_twisted.ensureDeferred
async def test_post_put(registry: Registry, repo: str) -> None:
    data = random_bytes(100_000)
    await finish(registry, repo, await registry.start_upload(repo), data, 0)


@pytest.mark.parametrize(
    "cuts, tail",
    [([], None), ([70_000, 150_000], None), ([70_000, 150_000], 150_000)],
    ids=["chunked-single", "chunked-multi", "chunked-multi-and-put-chunk"],
)
@pytest_twisted.ensureDeferred
async def test_chunked(registry: Registry, repo: str, cuts: list[int], tail: int | None) -> None:
    data = random_bytes(200_000)
    bounds = [0, *cuts, len(data)]
    if tail is not None:
        bounds.pop()
    location = await registry.start_upload(repo)
    for first, end in itertools.pairwise(bounds):
        location = await patch(registry, location, data, first, end)
    await finish(registry, repo, location, data, tail)


@pytest_twisted.ensureDeferred
async def test_post_with_digest_algorithm(registry: Registry, repo: str) -> None:
    """``?digest-algorithm=sha512`` on the POST (end-4c, which the spec asks of pushes other than sha256)."""
    data = random_bytes(20_000)
    resp = await registry.request("POST", with_query(uploads(registry, repo), **{"digest-algorithm": SHA512}))
    assert resp.status == 202, str(resp)
    await finish(registry, repo, await patch(registry, resp.location(), data, 0, len(data)), data)
    refused = await registry.request("POST", with_query(uploads(registry, repo), **{"digest-algorithm": "md5"}))
    assert_error(refused, 400, "DIGEST_INVALID")


@pytest_twisted.ensureDeferred
async def test_stream(registry: Registry, repo: str) -> None:
    data = random_bytes(70_000)
    location = await registry.start_upload(repo)
    resp = await registry.request("PATCH", location, body=StreamingBody([data[:5000], data[5000:]]), headers=OCTETS)
    assert resp.status == 202 and resp.header("Range") == f"0-{len(data) - 1}", str(resp)
    await finish(registry, repo, resp.location(), data)


@pytest_twisted.ensureDeferred
async def test_chunked_out_of_order_is_416(registry: Registry, repo: str) -> None:
    data = random_bytes(300)
    location = await patch(registry, await registry.start_upload(repo), data, 0, 100)
    gap = await registry.request("PATCH", location, body=data[200:], headers={**OCTETS, "Content-Range": "200-299"})
    assert gap.status == 416, str(gap)
    await finish(registry, repo, await patch(registry, location, data, 100, 300), data)


@pytest.mark.parametrize("source", ["from", "anonymous"])
@pytest_twisted.ensureDeferred
async def test_mount(registry: Registry, repo: str, other_repo: str, source: str) -> None:
    """With ``from`` the blob is mounted (201); without it (anonymous) the registry may mount it or open a
    session (202): either way the blob ends up in ``repo``."""
    data = random_bytes(5000)
    digest = await registry.push_blob(other_repo, data, SHA512)
    query = {"mount": digest, "from": other_repo} if source == "from" else {"mount": digest}
    resp = await registry.request("POST", with_query(uploads(registry, repo), **query))
    assert resp.status in ((201,) if source == "from" else (201, 202)), str(resp)
    if resp.status == 202:
        await finish(registry, repo, resp.location(), data, 0)
        return
    assert resp.header("Docker-Content-Digest") == digest, str(resp)
    assert resp.location().endswith(f"/v2/{repo}/blobs/{digest}"), resp.location()
    await assert_blob(registry, repo, data)


@pytest_twisted.ensureDeferred
async def test_mount_missing_opens_a_session(registry: Registry, repo: str, other_repo: str) -> None:
    await registry.push_blob(other_repo, random_bytes(10), SHA512)
    data = random_bytes(3000)
    query = {"mount": sha512_of(data), "from": other_repo}
    resp = await registry.request("POST", with_query(uploads(registry, repo), **query))
    assert resp.status == 202, str(resp)
    await finish(registry, repo, resp.location(), data, 0)


@pytest_twisted.ensureDeferred
async def test_post_cancel(registry: Registry, repo: str) -> None:
    data = random_bytes(1000)
    location = await patch(registry, await registry.start_upload(repo), data, 0, len(data))
    assert (await registry.request("DELETE", location)).status == 204
    assert_error(
        await registry.request("PUT", with_query(location, digest=sha512_of(data))), 404, "BLOB_UPLOAD_UNKNOWN"
    )
    assert not await registry.blob_exists(repo, sha512_of(data))


@pytest.mark.parametrize("data", [b"", EMPTY_JSON], ids=["empty", "empty-json"])
@pytest_twisted.ensureDeferred
async def test_empty_and_empty_json(registry: Registry, repo: str, data: bytes) -> None:
    await finish(registry, repo, await registry.start_upload(repo), data, 0)


@pytest_twisted.ensureDeferred
async def test_bad_digest_is_digest_invalid(registry: Registry, repo: str) -> None:
    data = random_bytes(4000)
    # Another blob's sha512, and a sha512 of the wrong length (it needs 128 hex).
    for claimed in (unknown_digest(SHA512), "sha512:" + "a" * 64):
        location = await registry.start_upload(repo)
        resp = await registry.request("PUT", with_query(location, digest=claimed), body=data, headers=OCTETS)
        assert_error(resp, 400, "DIGEST_INVALID")
    assert not await registry.blob_exists(repo, sha512_of(data))
    # The same bytes under the other algorithm are another blob: pushing one does not make the other exist.
    await registry.push_blob(repo, data)
    assert not await registry.blob_exists(repo, sha512_of(data))


RANGE_BLOB_SIZE = 2048


@pytest.mark.parametrize(
    "range_header, first, last",
    [
        ("bytes=500-1499", 500, 1499),
        ("bytes=500-", 500, 2047),
        ("bytes=-500", 1548, 2047),
        ("bytes=2000-5000", 2000, 2047),
    ],
)
@pytest_twisted.ensureDeferred
async def test_range(registry: Registry, repo: str, range_header: str, first: int, last: int) -> None:
    data = random_bytes(RANGE_BLOB_SIZE)
    digest = await registry.push_blob(repo, data, SHA512)
    resp = await registry.request("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": range_header})
    assert resp.status == 206 and resp.body == data[first : last + 1], str(resp)
    assert resp.header("Content-Range") == f"bytes {first}-{last}/{RANGE_BLOB_SIZE}"


@pytest.mark.parametrize("range_header", ["bytes=500-0", "bytes=5000-10000"])
@pytest_twisted.ensureDeferred
async def test_unsatisfiable_range_is_416(registry: Registry, repo: str, range_header: str) -> None:
    digest = await registry.push_blob(repo, random_bytes(RANGE_BLOB_SIZE), SHA512)
    resp = await registry.request("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": range_header})
    assert resp.status == 416, str(resp)


# ---- manifests: the "sha512" data (an index of images, every digest sha512, pushed by digest)


async def push_sha512_index(registry: Registry, repo: str) -> tuple[list[Any], bytes]:
    images = [make_image(layers=2, algorithm=SHA512, architecture=arch) for arch in ("amd64", "arm64")]
    for image in images:
        for blob in image.blobs:
            await registry.push_blob(repo, blob, SHA512)
        resp = await registry.put_manifest(repo, image.digest, image.manifest, OCI_MANIFEST)
        assert resp.status == 201 and resp.header("Docker-Content-Digest") == image.digest, str(resp)
        assert resp.location().endswith(f"/v2/{repo}/manifests/{image.digest}"), resp.location()
    index = make_index(images)
    resp = await registry.put_manifest(repo, sha512_of(index), index, OCI_INDEX)
    assert resp.status == 201 and resp.header("Docker-Content-Digest") == sha512_of(index), str(resp)
    return images, index


async def assert_manifest(registry: Registry, repo: str, reference: str, body: bytes, media_type: str) -> None:
    for method in ("GET", "HEAD"):
        resp = await registry.request(method, f"/v2/{repo}/manifests/{reference}", headers={"Accept": media_type})
        assert resp.status == 200, str(resp)
        assert resp.body == (body if method == "GET" else b"")
        assert resp.header("Docker-Content-Digest") == sha512_of(body)
        assert resp.header("Content-Type") == media_type
        assert resp.header("Content-Length") == str(len(body))


@pytest_twisted.ensureDeferred
async def test_sha512_image_index_push_head_pull(registry: Registry, repo: str) -> None:
    images, index = await push_sha512_index(registry, repo)
    await assert_manifest(registry, repo, sha512_of(index), index, OCI_INDEX)
    for image in images:
        await assert_manifest(registry, repo, image.digest, image.manifest, OCI_MANIFEST)
        for blob in image.blobs:
            await assert_blob(registry, repo, blob)
    # The same bytes by their sha256 are not stored: a manifest is found by the digest it was pushed by.
    assert_error(await registry.get_manifest(repo, digest_of(index)), 404, "MANIFEST_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_sha512_manifest_put_by_a_mismatching_digest_is_digest_invalid(registry: Registry, repo: str) -> None:
    image = make_image(algorithm=SHA512)
    for blob in image.blobs:
        await registry.push_blob(repo, blob, SHA512)
    resp = await registry.put_manifest(repo, unknown_digest(SHA512), image.manifest, OCI_MANIFEST)
    assert_error(resp, 400, "DIGEST_INVALID")


@pytest_twisted.ensureDeferred
async def test_sha512_manifest_missing_a_blob_is_manifest_blob_unknown(registry: Registry, repo: str) -> None:
    image = make_image(algorithm=SHA512)
    await registry.push_blob(repo, image.config, SHA512)  # the layers are missing
    resp = await registry.put_manifest(repo, image.digest, image.manifest, OCI_MANIFEST)
    assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_tag_param_sha512(registry: Registry, repo: str) -> None:
    image = make_image(algorithm=SHA512)
    for blob in image.blobs:
        await registry.push_blob(repo, blob, SHA512)
    url = registry.url(f"/v2/{repo}/manifests/{image.digest}?tag=tag-param-sha512-0&tag=tag-param-sha512-1")
    resp = await registry.request("PUT", url, body=image.manifest, headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 201 and resp.header("Docker-Content-Digest") == image.digest, str(resp)
    for tag in ("tag-param-sha512-0", "tag-param-sha512-1"):
        await assert_manifest(registry, repo, tag, image.manifest, OCI_MANIFEST)
    listed = await registry.request("GET", f"/v2/{repo}/tags/list")
    assert listed.status == 200 and listed.json()["tags"] == ["tag-param-sha512-0", "tag-param-sha512-1"]


@pytest_twisted.ensureDeferred
async def test_by_tag_a_manifest_is_named_by_its_sha256(registry: Registry, repo: str) -> None:
    """What clients expect of a push by tag, whatever the digests inside the manifest."""
    image = make_image(algorithm=SHA512)
    for blob in image.blobs:
        await registry.push_blob(repo, blob, SHA512)
    resp = await registry.put_manifest(repo, "v1", image.manifest, OCI_MANIFEST)
    assert resp.status == 201 and resp.header("Docker-Content-Digest") == digest_of(image.manifest), str(resp)
    got = await registry.get_manifest(repo, "v1")
    assert got.body == image.manifest and got.header("Docker-Content-Digest") == digest_of(image.manifest)


@pytest_twisted.ensureDeferred
async def test_referrers_of_a_sha512_manifest(registry: Registry, repo: str) -> None:
    images, _ = await push_sha512_index(registry, repo)
    await registry.push_blob(repo, EMPTY_JSON, SHA512)
    empty = {"mediaType": OCI_EMPTY, "digest": sha512_of(EMPTY_JSON), "size": len(EMPTY_JSON)}
    sbom = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sbom",
            "config": empty,
            "layers": [empty],
            "subject": images[0].descriptor(),
        },
        pretty=True,
    )
    resp = await registry.put_manifest(repo, sha512_of(sbom), sbom, OCI_MANIFEST)
    assert resp.status == 201 and resp.header("OCI-Subject") == images[0].digest, str(resp)
    listed = await registry.request("GET", f"/v2/{repo}/referrers/{images[0].digest}")
    assert listed.status == 200, str(listed)
    [entry] = listed.json()["manifests"]
    assert entry["digest"] == sha512_of(sbom) and entry["artifactType"] == "application/vnd.example.sbom"


# ---- pulls through an agent


@pytest.fixture
def agent(http: Any, herd: Any, reactor: Any) -> Registry:
    """Agent 0's read-only registry."""
    return Registry(http, f"http://{herd.agent_registry(0)}", reactor)


async def pull(agent: Registry, path: str, body: bytes) -> None:
    """GET ``/v2/<path>`` from the agent: exactly ``body``, named by its sha512."""
    resp = await agent.request("GET", f"/v2/{path}", headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})
    assert resp.status == 200 and resp.body == body, str(resp)
    assert resp.header("Docker-Content-Digest") == sha512_of(body)


@pytest_twisted.ensureDeferred
async def test_pull_through_an_agent(registry: Registry, agent: Registry, repo: str) -> None:
    images, index = await push_sha512_index(registry, repo)
    tagged = registry.url(f"/v2/{repo}/manifests/{sha512_of(index)}?tag=v1")
    resp = await registry.request("PUT", tagged, body=index, headers={"Content-Type": OCI_INDEX})
    assert resp.status == 201, str(resp)
    for reference in ("v1", sha512_of(index)):
        await pull(agent, f"{repo}/manifests/{reference}", index)
    for image in images:
        await pull(agent, f"{repo}/manifests/{image.digest}", image.manifest)
        for blob in image.blobs:
            await pull(agent, f"{repo}/blobs/{sha512_of(blob)}", blob)
    assert_error(await agent.request("GET", f"/v2/{repo}/blobs/{unknown_digest(SHA512)}"), 404, "BLOB_UNKNOWN")
