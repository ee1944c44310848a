"""Manifests: images, indexes and Docker types, exact bytes, negotiation and validation (end-3, end-7)."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from ._registry import (
    DOCKER_CONFIG,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Registry,
    assert_error,
    digest_of,
    make_image,
    make_index,
    random_bytes,
    unknown_digest,
)


async def assert_manifest(registry: Registry, repo: str, reference: str, body: bytes, media_type: str) -> None:
    resp = await registry.get_manifest(repo, reference)
    assert resp.status == 200, str(resp)
    assert resp.body == body, "the registry did not return the exact bytes pushed"
    assert resp.header("Content-Type") == media_type
    assert resp.header("Docker-Content-Digest") == digest_of(body)


@pytest_twisted.ensureDeferred
async def test_push_image_manifest_by_tag(registry: Registry, repo: str) -> None:
    image = make_image(layers=3)
    for blob in image.blobs:
        await registry.push_blob(repo, blob)
    resp = await registry.put_manifest(repo, "v1", image.manifest, OCI_MANIFEST)
    assert resp.status == 201, str(resp)
    assert resp.header("Docker-Content-Digest") == image.digest
    assert resp.header("Location"), str(resp)
    fetched = await registry.request("GET", resp.location(), headers={"Accept": OCI_MANIFEST})
    assert fetched.status == 200 and fetched.body == image.manifest, str(fetched)
    await assert_manifest(registry, repo, "v1", image.manifest, OCI_MANIFEST)
    await assert_manifest(registry, repo, image.digest, image.manifest, OCI_MANIFEST)


@pytest_twisted.ensureDeferred
async def test_push_image_manifest_by_digest(registry: Registry, repo: str) -> None:
    image = make_image()
    for blob in image.blobs:
        await registry.push_blob(repo, blob)
    resp = await registry.put_manifest(repo, image.digest, image.manifest, OCI_MANIFEST)
    assert resp.status == 201, str(resp)
    assert resp.header("Docker-Content-Digest") == image.digest
    await assert_manifest(registry, repo, image.digest, image.manifest, OCI_MANIFEST)


@pytest_twisted.ensureDeferred
async def test_exact_bytes_with_custom_fields_and_annotations(registry: Registry, repo: str) -> None:
    extra = {
        "annotations": {"org.example.note": "ünïcødé ✓", "org.opencontainers.image.created": "1970-01-01T00:00:00Z"},
        "x-custom-field": {"nested": [1, 2.50, None, True]},
    }
    for pretty in (True, False):
        image = make_image(extra=extra, pretty=pretty)
        for blob in image.blobs:
            await registry.push_blob(repo, blob)
        tag = f"pretty-{pretty}".lower()
        await registry.push_manifest(repo, tag, image.manifest, OCI_MANIFEST)
        await assert_manifest(registry, repo, tag, image.manifest, OCI_MANIFEST)


@pytest_twisted.ensureDeferred
async def test_image_without_layers(registry: Registry, repo: str) -> None:
    image = make_image(layers=0)
    await registry.push_blob(repo, image.config)
    await registry.push_manifest(repo, "nolayers", image.manifest, OCI_MANIFEST)
    await assert_manifest(registry, repo, "nolayers", image.manifest, OCI_MANIFEST)


@pytest_twisted.ensureDeferred
async def test_push_oci_index(registry: Registry, repo: str) -> None:
    images = [make_image(architecture=arch) for arch in ("amd64", "arm64")]
    for image in images:
        for blob in image.blobs:
            await registry.push_blob(repo, blob)
        await registry.push_manifest(repo, image.digest, image.manifest, OCI_MANIFEST)
    index = make_index(images)
    resp = await registry.put_manifest(repo, "multi", index, OCI_INDEX)
    assert resp.status == 201, str(resp)
    assert resp.header("Docker-Content-Digest") == digest_of(index)
    await assert_manifest(registry, repo, "multi", index, OCI_INDEX)
    await assert_manifest(registry, repo, digest_of(index), index, OCI_INDEX)
    for image in images:
        await assert_manifest(registry, repo, image.digest, image.manifest, OCI_MANIFEST)
    head = await registry.request("HEAD", f"/v2/{repo}/manifests/multi", headers={"Accept": OCI_INDEX})
    assert head.status == 200, str(head)
    assert head.header("Docker-Content-Digest") == digest_of(index)
    assert head.header("Content-Type") == OCI_INDEX


@pytest_twisted.ensureDeferred
async def test_push_docker_schema2_manifest_and_manifest_list(registry: Registry, repo: str) -> None:
    images = [make_image(media_type=DOCKER_MANIFEST, architecture=arch) for arch in ("amd64", "arm64")]
    assert json.loads(images[0].manifest)["config"]["mediaType"] == DOCKER_CONFIG
    for image in images:
        for blob in image.blobs:
            await registry.push_blob(repo, blob)
        resp = await registry.put_manifest(repo, image.digest, image.manifest, DOCKER_MANIFEST)
        assert resp.status == 201, str(resp)
    await registry.push_manifest(repo, "single", images[0].manifest, DOCKER_MANIFEST)
    await assert_manifest(registry, repo, "single", images[0].manifest, DOCKER_MANIFEST)

    manifest_list = make_index(images, media_type=DOCKER_LIST)
    resp = await registry.put_manifest(repo, "list", manifest_list, DOCKER_LIST)
    assert resp.status == 201, str(resp)
    assert resp.header("Docker-Content-Digest") == digest_of(manifest_list)
    await assert_manifest(registry, repo, "list", manifest_list, DOCKER_LIST)
    await assert_manifest(registry, repo, digest_of(manifest_list), manifest_list, DOCKER_LIST)


@pytest.mark.parametrize(
    "accept",
    [
        [f"{DOCKER_MANIFEST}, {OCI_MANIFEST}, {OCI_INDEX}"],  # one comma-separated header
        [DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST],  # repeated headers
        [f"{DOCKER_MANIFEST};q=0.9, {OCI_MANIFEST};q=0.5"],  # q parameters do not convert anything
        [OCI_MANIFEST],
    ],
    ids=["comma-list", "repeated", "q-values", "exact"],
)
@pytest_twisted.ensureDeferred
async def test_accept_lists_containing_the_type_get_the_stored_manifest(
    registry: Registry, repo: str, accept: list[str]
) -> None:
    image = await registry.push_image(repo, "v1")
    resp = await registry.request("GET", f"/v2/{repo}/manifests/v1", headers={"Accept": accept})
    assert resp.status == 200, str(resp)
    assert resp.body == image.manifest
    assert resp.header("Content-Type") == OCI_MANIFEST


@pytest_twisted.ensureDeferred
async def test_accept_without_the_stored_type_does_not_get_it(registry: Registry, repo: str) -> None:
    """An OCI manifest asked for with Docker types only.

    distribution answers 404 MANIFEST_UNKNOWN; 406 Not Acceptable is the plain HTTP answer.
    """
    await registry.push_image(repo, "v1")
    resp = await registry.request(
        "GET", f"/v2/{repo}/manifests/v1", headers={"Accept": f"{DOCKER_MANIFEST}, {DOCKER_LIST}"}
    )
    assert resp.status in (404, 406), str(resp)
    if resp.status == 404:
        assert_error(resp, 404, "MANIFEST_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_etag_and_if_none_match(registry: Registry, repo: str) -> None:
    image = await registry.push_image(repo, "v1")
    resp = await registry.get_manifest(repo, "v1")
    assert resp.status == 200, str(resp)
    etag = resp.header("ETag")
    assert etag == f'"{image.digest}"', f"ETag {etag!r}"
    for reference in ("v1", image.digest):
        cached = await registry.request(
            "GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST, "If-None-Match": etag}
        )
        assert cached.status == 304, str(cached)
        assert cached.body == b""
    stale = await registry.request(
        "GET", f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST, "If-None-Match": f'"{unknown_digest()}"'}
    )
    assert stale.status == 200 and stale.body == image.manifest, str(stale)


@pytest_twisted.ensureDeferred
async def test_manifest_with_a_missing_layer_is_manifest_blob_unknown(registry: Registry, repo: str) -> None:
    image = make_image(layers=2)
    await registry.push_blob(repo, image.config)
    await registry.push_blob(repo, image.layers[0])  # layers[1] is never pushed
    resp = await registry.put_manifest(repo, "broken", image.manifest, OCI_MANIFEST)
    assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")
    assert_error(await registry.get_manifest(repo, "broken"), 404, ("MANIFEST_UNKNOWN", "NAME_UNKNOWN"))
    assert_error(await registry.get_manifest(repo, image.digest), 404, ("MANIFEST_UNKNOWN", "NAME_UNKNOWN"))


@pytest_twisted.ensureDeferred
async def test_manifest_with_a_missing_config_is_manifest_blob_unknown(registry: Registry, repo: str) -> None:
    image = make_image(layers=1)
    await registry.push_blob(repo, image.layers[0])
    resp = await registry.put_manifest(repo, "noconfig", image.manifest, OCI_MANIFEST)
    assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")


def padded_manifest(config: bytes, layer: bytes, total: int) -> bytes:
    """A valid image manifest of exactly ``total`` bytes (an annotation pads it)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}],
        "annotations": {"org.example.padding": ""},
    }
    base = len(json.dumps(doc).encode())
    doc["annotations"]["org.example.padding"] = "x" * (total - base)
    body = json.dumps(doc).encode()
    assert len(body) == total
    return body


@pytest.mark.parametrize("size", [60_000, 100_000, 1_000_000, 4_000_000], ids=["60kB", "100kB", "1MB", "4MB"])
@pytest_twisted.ensureDeferred
async def test_large_manifest_is_accepted(registry: Registry, repo: str, size: int) -> None:
    """Registries should accept manifests of at least 4 MB (the upstream "large-manifest" group)."""
    config, layer = b'{"architecture":"amd64","os":"linux"}', random_bytes(100)
    await registry.push_blob(repo, config)
    await registry.push_blob(repo, layer)
    body = padded_manifest(config, layer, size)
    resp = await registry.put_manifest(repo, "large", body, OCI_MANIFEST)
    assert resp.status == 201, str(resp)
    await assert_manifest(registry, repo, "large", body, OCI_MANIFEST)
    await assert_manifest(registry, repo, digest_of(body), body, OCI_MANIFEST)


@pytest_twisted.ensureDeferred
async def test_manifest_over_4mib_is_413(registry: Registry, repo: str) -> None:
    config, layer = b'{"architecture":"amd64","os":"linux"}', random_bytes(100)
    await registry.push_blob(repo, config)
    await registry.push_blob(repo, layer)
    body = padded_manifest(config, layer, 4 * 1024 * 1024 + 1024)
    resp = await registry.put_manifest(repo, "huge", body, OCI_MANIFEST)
    assert resp.status == 413, str(resp)
    assert_error(await registry.get_manifest(repo, "huge"), 404, ("MANIFEST_UNKNOWN", "NAME_UNKNOWN"))


@pytest_twisted.ensureDeferred
async def test_manifest_put_by_a_mismatching_digest_is_digest_invalid(registry: Registry, repo: str) -> None:
    image = make_image()
    for blob in image.blobs:
        await registry.push_blob(repo, blob)
    claimed = unknown_digest()
    resp = await registry.put_manifest(repo, claimed, image.manifest, OCI_MANIFEST)
    assert_error(resp, 400, "DIGEST_INVALID")
    for reference in (claimed, image.digest):
        assert_error(await registry.get_manifest(repo, reference), 404, ("MANIFEST_UNKNOWN", "NAME_UNKNOWN"))


@pytest_twisted.ensureDeferred
async def test_index_referencing_an_unknown_manifest_is_manifest_blob_unknown(registry: Registry, repo: str) -> None:
    known = await registry.push_image(repo, None)
    index = make_index([known, make_image()])  # the second image was never pushed
    resp = await registry.put_manifest(repo, "dangling", index, OCI_INDEX)
    assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")
    assert_error(await registry.get_manifest(repo, "dangling"), 404, ("MANIFEST_UNKNOWN", "NAME_UNKNOWN"))


@pytest.mark.parametrize("tag", [".dot", "-dash", "x" * 129, "with space", "colon:tag"])
@pytest_twisted.ensureDeferred
async def test_invalid_tag_is_refused(registry: Registry, repo: str, tag: str) -> None:
    image = make_image()
    for blob in image.blobs:
        await registry.push_blob(repo, blob)
    resp = await registry.put_manifest(repo, tag.replace(" ", "%20"), image.manifest, OCI_MANIFEST)
    assert_error(resp, (400, 404), ("TAG_INVALID", "MANIFEST_INVALID", "DIGEST_INVALID"))
    tags = await registry.request("GET", f"/v2/{repo}/tags/list")
    assert tags.status == 404 or not tags.json().get("tags"), str(tags)


@pytest_twisted.ensureDeferred
async def test_malformed_manifest_is_manifest_invalid(registry: Registry, repo: str) -> None:
    for body in (b"{not json", b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"'):
        resp = await registry.put_manifest(repo, "bad", body, OCI_MANIFEST)
        assert_error(resp, 400, "MANIFEST_INVALID")


@pytest_twisted.ensureDeferred
async def test_retagging_moves_the_tag(registry: Registry, repo: str) -> None:
    first = await registry.push_image(repo, "moving")
    second = await registry.push_image(repo, "moving")
    await assert_manifest(registry, repo, "moving", second.manifest, OCI_MANIFEST)
    await assert_manifest(registry, repo, first.digest, first.manifest, OCI_MANIFEST)
