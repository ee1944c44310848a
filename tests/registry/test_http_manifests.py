"""Manifest pushes and pulls through the HTTP API."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kraken.core import Digest
from kraken.registry.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
)

from .conftest import Registry, digest_of, encode, parse_wire

ALL_TYPES = [DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX]


def pushable(reg: Registry, repo: str, media_type: str) -> dict[str, Any]:
    """A manifest of ``media_type`` whose references are all in ``repo``."""
    if media_type in (DOCKER_MANIFEST, OCI_MANIFEST):
        return reg.image(repo, media_type=media_type)
    child_type = DOCKER_MANIFEST if media_type == DOCKER_MANIFEST_LIST else OCI_MANIFEST
    children = []
    for arch in ("amd64", "arm64"):
        child = reg.image(repo, media_type=child_type, seed=arch)
        r = reg.put_manifest(repo, str(digest_of(child)), child, child_type)
        assert r.code == 201, r.body
        children.append(
            {
                "mediaType": child_type,
                "digest": str(digest_of(child)),
                "size": len(encode(child)),
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    return {"schemaVersion": 2, "mediaType": media_type, "manifests": children}


def puts(reg: Registry) -> list[tuple[Any, ...]]:
    return [args for name, args in reg.source.calls if name == "put_manifest"]


@pytest.mark.parametrize("media_type", ALL_TYPES)
def test_push_and_pull_by_tag_and_digest(registry: Registry, media_type: str) -> None:
    repo = "library/app"
    doc = pushable(registry, repo, media_type)
    body = encode(doc)
    d = Digest.from_bytes(body)
    r = registry.put_manifest(repo, "v1", body, media_type)
    assert r.code == 201, r.body
    assert r.header("Location") == f"/v2/{repo}/manifests/{d}"
    assert r.header("Docker-Content-Digest") == str(d)
    assert r.header("OCI-Subject") is None
    record = registry.source.repos[repo].manifests[d]
    assert (record.media_type, record.size, record.digest) == (media_type, len(body), d)
    assert registry.source.repos[repo].tags["v1"] == d

    for ref in ("v1", str(d)):
        r = registry.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": media_type})
        assert r.code == 200
        assert r.body == body
        assert r.all("Content-Type") == [media_type]
        assert r.header("Docker-Content-Digest") == str(d)
        assert r.header("ETag") == f'"{d}"'
        h = registry.head(f"/v2/{repo}/manifests/{ref}", headers={"Accept": media_type})
        assert (h.code, h.body) == (200, b"")
        assert h.header("Content-Length") == str(len(body))
        assert h.all("Content-Type") == [media_type]
        assert h.header("Docker-Content-Digest") == str(d)


def test_get_wire_headers(registry: Registry) -> None:
    doc = pushable(registry, "a", OCI_MANIFEST)
    body = encode(doc)
    registry.put_manifest("a", "latest", body, OCI_MANIFEST)
    status, headers, got = parse_wire(registry.raw(b"GET /v2/a/manifests/latest HTTP/1.1\r\nHost: r\r\n\r\n"))
    assert (status, got) == (200, body)
    assert headers["content-length"] == str(len(body))
    assert headers["content-type"] == OCI_MANIFEST
    status, headers, got = parse_wire(registry.raw(b"HEAD /v2/a/manifests/latest HTTP/1.1\r\nHost: r\r\n\r\n"))
    assert (status, got) == (200, b"")
    assert headers["content-length"] == str(len(body))


def test_head_does_not_read_the_body(registry: Registry) -> None:
    doc = pushable(registry, "a", DOCKER_MANIFEST)
    registry.put_manifest("a", "t", doc, DOCKER_MANIFEST)
    registry.source.calls.clear()
    assert registry.head("/v2/a/manifests/t").code == 200
    assert not [c for c in registry.source.calls if c[0] == "read_blob"]


def test_push_by_digest(registry: Registry) -> None:
    doc = pushable(registry, "a", OCI_MANIFEST)
    d = digest_of(doc)
    r = registry.put_manifest("a", str(d), doc, OCI_MANIFEST)
    assert r.code == 201
    assert puts(registry)[-1][3] is None  # no tag
    assert registry.get(f"/v2/a/manifests/{d}").body == encode(doc)
    assert registry.get("/v2/a/tags/list").json() == {"name": "a", "tags": []}


def test_push_by_digest_with_tag_parameters(registry: Registry) -> None:
    doc = pushable(registry, "a", OCI_MANIFEST)
    d = digest_of(doc)
    r = registry.put_manifest("a", f"{d}?tag=v1&tag=v2", doc, OCI_MANIFEST)
    assert r.code == 201
    assert r.all("OCI-Tag") == ["v1", "v2"]
    assert registry.get("/v2/a/tags/list").json()["tags"] == ["v1", "v2"]
    r = registry.put_manifest("a", f"{d}?tag=.bad", doc, OCI_MANIFEST)
    assert (r.code, r.error_code) == (400, "TAG_INVALID")


def test_push_by_wrong_digest(registry: Registry) -> None:
    doc = pushable(registry, "a", OCI_MANIFEST)
    wrong = Digest.from_bytes(b"other")
    r = registry.put_manifest("a", str(wrong), doc, OCI_MANIFEST)
    assert (r.code, r.error_code) == (400, "DIGEST_INVALID")
    assert puts(registry) == []


def test_retag(registry: Registry) -> None:
    doc = pushable(registry, "a", DOCKER_MANIFEST)
    assert registry.put_manifest("a", "one", doc, DOCKER_MANIFEST).code == 201
    assert registry.put_manifest("a", "two", doc, DOCKER_MANIFEST).code == 201
    assert registry.get("/v2/a/manifests/one").body == registry.get("/v2/a/manifests/two").body == encode(doc)


def test_content_type_parameters_dropped(registry: Registry) -> None:
    doc = pushable(registry, "a", OCI_MANIFEST)
    r = registry.put_manifest("a", "t", doc, f"{OCI_MANIFEST}; charset=utf-8")
    assert r.code == 201
    assert registry.get("/v2/a/manifests/t").all("Content-Type") == [OCI_MANIFEST]


def test_media_type_inferred_without_content_type(registry: Registry) -> None:
    doc = pushable(registry, "a", OCI_MANIFEST)
    del doc["mediaType"]
    assert registry.put_manifest("a", "t", doc, "application/json").code == 201
    assert registry.get("/v2/a/manifests/t").header("Content-Type") == OCI_MANIFEST


def test_content_type_disagrees(registry: Registry) -> None:
    doc = pushable(registry, "a", OCI_MANIFEST)
    r = registry.put_manifest("a", "t", doc, DOCKER_MANIFEST)
    assert (r.code, r.error_code) == (400, "MANIFEST_INVALID")
    assert "does not match" in r.json()["errors"][0]["message"]
    assert puts(registry) == []


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"schemaVersion": 1}', b"[]"])
def test_invalid_manifests(registry: Registry, body: bytes) -> None:
    r = registry.put_manifest("a", "t", body, OCI_MANIFEST)
    assert (r.code, r.error_code) == (400, "MANIFEST_INVALID")


def test_missing_layer(registry: Registry) -> None:
    doc = pushable(registry, "a", DOCKER_MANIFEST)
    missing = Digest.from_bytes(b"never pushed")
    doc["layers"].append({"mediaType": doc["layers"][0]["mediaType"], "digest": str(missing), "size": 12})
    r = registry.put_manifest("a", "t", doc, DOCKER_MANIFEST)
    assert (r.code, r.error_code) == (400, "MANIFEST_BLOB_UNKNOWN")
    assert r.json()["errors"][0]["detail"] == {"missing": [str(missing)]}
    assert str(missing) in r.json()["errors"][0]["message"]
    assert puts(registry) == []


def test_missing_config(registry: Registry) -> None:
    doc = pushable(registry, "a", OCI_MANIFEST)
    doc["config"]["digest"] = str(Digest.from_bytes(b"no config"))
    r = registry.put_manifest("a", "t", doc, OCI_MANIFEST)
    assert r.error_code == "MANIFEST_BLOB_UNKNOWN"


@pytest.mark.parametrize("media_type", [DOCKER_MANIFEST_LIST, OCI_INDEX])
def test_missing_child_manifest(registry: Registry, media_type: str) -> None:
    doc = pushable(registry, "a", media_type)
    missing = Digest.from_bytes(b"no such child")
    doc["manifests"].append({"mediaType": OCI_MANIFEST, "digest": str(missing), "size": 3})
    r = registry.put_manifest("a", "t", doc, media_type)
    assert (r.code, r.error_code) == (400, "MANIFEST_BLOB_UNKNOWN")
    assert r.json()["errors"][0]["detail"] == {"missing": [str(missing)]}


def test_child_manifest_must_be_in_the_same_repository(registry: Registry) -> None:
    doc = pushable(registry, "a", OCI_INDEX)
    r = registry.put_manifest("b", "t", doc, OCI_INDEX)
    assert r.error_code == "MANIFEST_BLOB_UNKNOWN"
    assert len(r.json()["errors"][0]["detail"]["missing"]) == 2


def test_blobs_are_global(registry: Registry) -> None:
    doc = pushable(registry, "a", OCI_MANIFEST)
    assert registry.put_manifest("b", "t", doc, OCI_MANIFEST).code == 201


def test_nested_and_empty_index(registry: Registry) -> None:
    inner = pushable(registry, "a", OCI_INDEX)
    assert registry.put_manifest("a", str(digest_of(inner)), inner, OCI_INDEX).code == 201
    outer = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_INDEX, "digest": str(digest_of(inner)), "size": len(encode(inner))}],
    }
    assert registry.put_manifest("a", "nested", outer, OCI_INDEX).code == 201
    empty = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    assert registry.put_manifest("a", "empty", empty, OCI_INDEX).code == 201


def test_subject_need_not_exist(registry: Registry) -> None:
    registry.push_blob("a", b"{}")
    subject = Digest.from_bytes(b"not pushed yet")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": OCI_EMPTY, "digest": str(Digest.from_bytes(b"{}")), "size": 2},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": str(subject), "size": 123},
        "annotations": {"org.example": "yes"},
    }
    r = registry.put_manifest("a", str(digest_of(doc)), doc, OCI_MANIFEST)
    assert r.code == 201, r.body
    assert r.header("OCI-Subject") == str(subject)
    record = registry.source.repos["a"].manifests[digest_of(doc)]
    assert record.subject == subject
    assert record.artifact_type == "application/vnd.example.sig"
    assert record.annotations == {"org.example": "yes"}


def test_oversized_manifest(make_registry: Any) -> None:
    reg = make_registry(max_manifest_size=1000)
    doc = pushable(reg, "a", OCI_MANIFEST)
    doc["annotations"] = {"padding": "x" * 2000}
    r = reg.put_manifest("a", "t", doc, OCI_MANIFEST)
    assert (r.code, r.error_code) == (413, "SIZE_INVALID")
    assert puts(reg) == []
    # without Content-Length (chunked), the spooled size is checked
    from .conftest import chunked_request

    status, _, body = parse_wire(
        reg.raw(chunked_request("PUT", "/v2/a/manifests/t", encode(doc), {"Content-Type": OCI_MANIFEST}))
    )
    assert status == 413
    assert json.loads(body)["errors"][0]["code"] == "SIZE_INVALID"
    # at the limit is fine
    del doc["annotations"]
    assert len(encode(doc)) <= 1000
    assert reg.put_manifest("a", "t", doc, OCI_MANIFEST).code == 201


def test_manifest_limit_checked_before_reading(make_registry: Any) -> None:
    reg = make_registry(max_manifest_size=10)
    wire = reg.raw(b"PUT /v2/a/manifests/t HTTP/1.1\r\nHost: r\r\nContent-Length: 11\r\n\r\n" + b"x" * 11)
    assert parse_wire(wire)[0] == 413


# -- negotiation and caching ---------------------------------------------------------


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, OCI_INDEX])
def test_docker_only_accept_gets_404_for_oci(registry: Registry, media_type: str) -> None:
    doc = pushable(registry, "a", media_type)
    registry.put_manifest("a", "t", doc, media_type)
    docker_only = f"{DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}"
    r = registry.get("/v2/a/manifests/t", headers={"Accept": docker_only})
    assert (r.code, r.error_code) == (404, "MANIFEST_UNKNOWN")
    assert registry.head("/v2/a/manifests/t", headers={"Accept": docker_only}).code == 404
    for accept in (f"{docker_only}, {media_type}", "*/*", f"{media_type};q=0.1"):
        assert registry.get("/v2/a/manifests/t", headers={"Accept": accept}).code == 200
    assert registry.get("/v2/a/manifests/t").code == 200


def test_repeated_accept_headers(registry: Registry) -> None:
    doc = pushable(registry, "a", OCI_MANIFEST)
    registry.put_manifest("a", "t", doc, OCI_MANIFEST)
    raw = (
        b"GET /v2/a/manifests/t HTTP/1.1\r\nHost: r\r\n"
        b"Accept: " + DOCKER_MANIFEST.encode() + b"\r\nAccept: " + OCI_MANIFEST.encode() + b"\r\n\r\n"
    )
    assert parse_wire(registry.raw(raw))[0] == 200


def test_docker_manifest_served_to_oci_only_accept(registry: Registry) -> None:
    doc = pushable(registry, "a", DOCKER_MANIFEST)
    registry.put_manifest("a", "t", doc, DOCKER_MANIFEST)
    r = registry.get("/v2/a/manifests/t", headers={"Accept": OCI_MANIFEST})
    assert (r.code, r.header("Content-Type")) == (200, DOCKER_MANIFEST)


def test_if_none_match(registry: Registry) -> None:
    doc = pushable(registry, "a", OCI_MANIFEST)
    registry.put_manifest("a", "t", doc, OCI_MANIFEST)
    d = digest_of(doc)
    for value in (f'"{d}"', f'W/"{d}"', f'"sha256:{"0" * 64}", "{d}"', "*"):
        r = registry.get("/v2/a/manifests/t", headers={"If-None-Match": value})
        assert (r.code, r.body) == (304, b""), value
        assert r.header("ETag") == f'"{d}"'
        assert r.header("Docker-Content-Digest") == str(d)
    r = registry.get("/v2/a/manifests/t", headers={"If-None-Match": f'"sha256:{"0" * 64}"'})
    assert (r.code, r.body) == (200, encode(doc))


def test_unknown_manifests(registry: Registry) -> None:
    r = registry.get("/v2/a/manifests/latest")
    assert (r.code, r.error_code) == (404, "MANIFEST_UNKNOWN")
    r = registry.get(f"/v2/a/manifests/{Digest.from_bytes(b'x')}")
    assert (r.code, r.error_code) == (404, "MANIFEST_UNKNOWN")
    assert registry.head("/v2/a/manifests/latest").code == 404


def test_manifest_in_another_repository_is_unknown(registry: Registry) -> None:
    doc = pushable(registry, "a", OCI_MANIFEST)
    registry.put_manifest("a", "t", doc, OCI_MANIFEST)
    assert registry.get(f"/v2/b/manifests/{digest_of(doc)}").error_code == "MANIFEST_UNKNOWN"


@pytest.mark.parametrize(
    ("reference", "code"),
    [
        (".bad", "TAG_INVALID"),
        ("t" * 129, "TAG_INVALID"),
        ("sha256:abc", "DIGEST_INVALID"),
        ("md5:x", "DIGEST_INVALID"),
    ],
)
def test_invalid_references(registry: Registry, reference: str, code: str) -> None:
    for method in ("GET", "HEAD", "PUT"):
        r = registry.request(method, f"/v2/a/manifests/{reference}", body=b"{}")
        assert r.code == 400
        if method != "HEAD":
            assert r.error_code == code


def test_invalid_name(registry: Registry) -> None:
    r = registry.get("/v2/UPPER/manifests/latest")
    assert (r.code, r.error_code) == (400, "NAME_INVALID")


def test_delete_manifest_unsupported(registry: Registry) -> None:
    doc = pushable(registry, "a", OCI_MANIFEST)
    registry.put_manifest("a", "t", doc, OCI_MANIFEST)
    r = registry.request("DELETE", f"/v2/a/manifests/{digest_of(doc)}")
    assert (r.code, r.error_code) == (405, "UNSUPPORTED")
    assert registry.get("/v2/a/manifests/t").code == 200


def test_recorded_manifest_without_bytes(registry: Registry) -> None:
    doc = pushable(registry, "a", OCI_MANIFEST)
    registry.put_manifest("a", "t", doc, OCI_MANIFEST)
    del registry.source.blobs[digest_of(doc)]
    r = registry.get("/v2/a/manifests/t")
    assert (r.code, r.error_code) == (404, "MANIFEST_UNKNOWN")
    assert r.header("Docker-Content-Digest") is None


def test_artifact_type_from_config(registry: Registry) -> None:
    doc = pushable(registry, "a", OCI_MANIFEST)
    registry.put_manifest("a", "t", doc, OCI_MANIFEST)
    assert registry.source.repos["a"].manifests[digest_of(doc)].artifact_type == OCI_CONFIG
