from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kraken.core import Digest
from kraken.registry.errors import ManifestInvalid
from kraken.registry.manifests import (
    DOCKER_CONFIG,
    DOCKER_FOREIGN_LAYER,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    ParsedManifest,
    accepted_types,
    negotiate,
    parse_manifest,
)

D1 = Digest.from_bytes(b"config")
D2 = Digest.from_bytes(b"layer")
D3 = Digest.from_bytes(b"child")


def desc(media_type: str, digest: Digest, size: int = 6, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(digest), "size": size, **extra}


def image(media_type: str | None = OCI_MANIFEST, **extra: Any) -> dict[str, Any]:
    config_type = DOCKER_CONFIG if media_type == DOCKER_MANIFEST else OCI_CONFIG
    layer_type = DOCKER_LAYER if media_type == DOCKER_MANIFEST else OCI_LAYER_GZIP
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "config": desc(config_type, D1),
        "layers": [desc(layer_type, D2, 5)],
        **extra,
    }
    if media_type is not None:
        doc["mediaType"] = media_type
    return doc


def index(media_type: str | None = OCI_INDEX, **extra: Any) -> dict[str, Any]:
    child_type = DOCKER_MANIFEST if media_type == DOCKER_MANIFEST_LIST else OCI_MANIFEST
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "manifests": [desc(child_type, D3, 100, platform={"architecture": "amd64", "os": "linux"})],
        **extra,
    }
    if media_type is not None:
        doc["mediaType"] = media_type
    return doc


def parse(doc: Any, content_type: str | None = None) -> ParsedManifest:
    return parse_manifest(json.dumps(doc).encode(), content_type)


def invalid(doc: Any, content_type: str | None = None, match: str = "") -> str:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with pytest.raises(ManifestInvalid, match=match) as e:
        parse_manifest(body, content_type)
    assert e.value.status == 400
    assert e.value.code == "MANIFEST_INVALID"
    return e.value.message


@pytest.mark.parametrize("media_type", [DOCKER_MANIFEST, OCI_MANIFEST])
def test_image_manifests(media_type: str) -> None:
    doc = image(media_type)
    body = json.dumps(doc).encode()
    m = parse_manifest(body, media_type)
    assert m.media_type == media_type
    assert m.digest == Digest.from_bytes(body)
    assert m.size == len(body)
    assert m.config is not None and m.config.digest == D1
    assert [b.digest for b in m.blobs] == [D1, D2]
    assert m.manifests == ()
    assert m.required_blobs() == [D1, D2]
    assert m.required_manifests() == []
    assert not m.is_index


@pytest.mark.parametrize("media_type", [DOCKER_MANIFEST_LIST, OCI_INDEX])
def test_indexes(media_type: str) -> None:
    m = parse(index(media_type), f"{media_type}; charset=utf-8")
    assert m.media_type == media_type
    assert m.is_index
    assert m.blobs == ()
    assert m.config is None
    assert m.required_manifests() == [D3]


def test_empty_index_is_valid() -> None:
    m = parse({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
    assert m.manifests == ()


def test_media_type_from_content_type_when_field_absent() -> None:
    assert parse(image(None), OCI_MANIFEST).media_type == OCI_MANIFEST
    assert parse(index(None), OCI_INDEX).media_type == OCI_INDEX


@pytest.mark.parametrize("content_type", [None, "", "application/json", "text/plain", "application/octet-stream"])
def test_media_type_inferred_from_structure(content_type: str | None) -> None:
    assert parse(image(None), content_type).media_type == OCI_MANIFEST
    assert parse(index(None), content_type).media_type == OCI_INDEX
    # ... and a generic Content-Type does not contradict the field
    assert parse(image(DOCKER_MANIFEST), content_type).media_type == DOCKER_MANIFEST


def test_content_type_must_agree_with_media_type_field() -> None:
    msg = invalid(image(OCI_MANIFEST), DOCKER_MANIFEST, match="does not match")
    assert DOCKER_MANIFEST in msg and OCI_MANIFEST in msg
    invalid(index(OCI_INDEX), OCI_MANIFEST, match="does not match")


def test_content_type_must_agree_with_structure() -> None:
    invalid(image(None), OCI_INDEX, match="must not have 'config'")
    invalid(index(None), OCI_MANIFEST, match="must not have 'manifests'")
    invalid(image(OCI_INDEX), match="must not have 'config'")
    invalid(index(DOCKER_MANIFEST), match="must not have 'manifests'")


def test_docker_types_need_media_type_field() -> None:
    invalid(image(None), DOCKER_MANIFEST, match="must declare its mediaType")
    invalid(index(None), DOCKER_MANIFEST_LIST, match="must declare its mediaType")


@pytest.mark.parametrize("legacy", [DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED])
def test_schema1_refused(legacy: str) -> None:
    invalid(image(None), legacy, match="schema1")
    invalid({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}, match="schema1")
    invalid(image(legacy), match="schema1")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[" * 100000, "not valid JSON"),
        (b"[]", "JSON object"),
        (b'"x"', "JSON object"),
    ],
)
def test_not_json(body: bytes, match: str) -> None:
    invalid(body, match=match)


@pytest.mark.parametrize("version", [None, 3, "2", 2.0, True])
def test_schema_version(version: Any) -> None:
    doc = image()
    if version is None:
        del doc["schemaVersion"]
    else:
        doc["schemaVersion"] = version
    invalid(doc, match="schemaVersion")


def test_unknown_types() -> None:
    invalid(image("application/vnd.example+json"), match="unsupported manifest mediaType")
    invalid(image(None), "application/vnd.example+json", match="unsupported manifest Content-Type")
    invalid(image(1), match="mediaType must be a string")  # type: ignore[arg-type]
    invalid({"schemaVersion": 2}, match="cannot tell")


def test_both_structures() -> None:
    doc = image()
    doc["manifests"] = []
    invalid(doc, match="both")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.pop("config"), "must have a 'config'"),
        (lambda d: d.__setitem__("config", "x"), "config must be a descriptor"),
        (lambda d: d.__setitem__("layers", {}), "'layers' must be a list"),
        (lambda d: d["config"].pop("mediaType"), r"config\.mediaType"),
        (lambda d: d["config"].__setitem__("mediaType", "no-slash"), r"config\.mediaType"),
        (lambda d: d["config"].__setitem__("digest", "sha256:xyz"), r"config\.digest is invalid"),
        (lambda d: d["config"].__setitem__("digest", "sha256:" + "A" * 64), r"config\.digest is invalid"),
        (lambda d: d["config"].__setitem__("digest", 5), r"config\.digest must be a string"),
        (lambda d: d["layers"][0].__setitem__("size", -1), r"layers\[0\]\.size"),
        (lambda d: d["layers"][0].__setitem__("size", "5"), r"layers\[0\]\.size"),
        (lambda d: d["layers"][0].__setitem__("size", True), r"layers\[0\]\.size"),
        (lambda d: d["layers"][0].pop("size"), r"layers\[0\]\.size"),
        (lambda d: d["layers"][0].__setitem__("urls", "http://x"), r"urls"),
        (lambda d: d["layers"][0].__setitem__("annotations", {"a": 1}), r"annotations"),
        (lambda d: d.__setitem__("annotations", []), r"annotations"),
        (lambda d: d.__setitem__("artifactType", "nope"), r"artifactType"),
        (lambda d: d.__setitem__("subject", {"digest": "x"}), r"subject"),
        (lambda d: d["layers"][0].__setitem__("data", "!!!"), r"base64"),
        (lambda d: d["layers"][0].__setitem__("data", base64.b64encode(b"other").decode()), r"does not match"),
    ],
)
def test_malformed_descriptors(mutate: Any, match: str) -> None:
    doc = image()
    mutate(doc)
    invalid(doc, match=match)


def test_malformed_index_entries() -> None:
    invalid({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": {}}, match="'manifests' must be a list")
    doc = index()
    doc["manifests"][0]["digest"] = "sha256:short"
    invalid(doc, match=r"manifests\[0\]\.digest")


def test_embedded_data_checked() -> None:
    doc = image()
    doc["layers"][0]["data"] = base64.b64encode(b"layer").decode()
    assert parse(doc).blobs[1].digest == D2


def test_layers_may_be_empty_or_absent() -> None:
    doc = image()
    doc["layers"] = []
    assert parse(doc).required_blobs() == [D1]
    del doc["layers"]
    assert parse(doc).required_blobs() == [D1]


def test_foreign_layers_with_urls_not_required() -> None:
    doc = image(DOCKER_MANIFEST)
    doc["layers"].append(desc(DOCKER_FOREIGN_LAYER, D3, 9, urls=["https://example.com/layer"]))
    doc["layers"].append(desc(DOCKER_FOREIGN_LAYER, Digest.from_bytes(b"nourl"), 9))
    m = parse(doc)
    assert m.required_blobs() == [D1, D2, Digest.from_bytes(b"nourl")]


def test_duplicate_references_reported_once() -> None:
    doc = image()
    doc["layers"].append(doc["layers"][0])
    assert parse(doc).required_blobs() == [D1, D2]


def test_subject_artifact_type_annotations() -> None:
    doc = image(
        subject=desc(OCI_MANIFEST, D3, 100), artifactType="application/vnd.example.sbom", annotations={"a": "b"}
    )
    m = parse(doc)
    assert m.subject == D3
    assert m.artifact_type == "application/vnd.example.sbom"
    assert m.annotations == {"a": "b"}
    rec = m.record()
    assert (rec.digest, rec.media_type, rec.size, rec.subject) == (m.digest, OCI_MANIFEST, m.size, D3)
    assert rec.descriptor()["artifactType"] == "application/vnd.example.sbom"
    assert rec.descriptor()["annotations"] == {"a": "b"}


def test_artifact_type_defaults_to_config_media_type() -> None:
    doc = image()
    doc["config"]["mediaType"] = OCI_EMPTY
    assert parse(doc).artifact_type == OCI_EMPTY
    # OCI 1.1 (distribution-spec "Listing Referrers"): the config mediaType,
    # whatever it is, when artifactType is absent.
    assert parse(image()).artifact_type == OCI_CONFIG
    assert parse(index()).artifact_type is None
    assert parse(index(artifactType="application/vnd.example")).artifact_type == "application/vnd.example"


def test_docker_manifests_have_no_subject_or_artifact_type() -> None:
    doc = image(DOCKER_MANIFEST, subject=desc(OCI_MANIFEST, D3), artifactType="application/x.y")
    m = parse(doc)
    assert m.subject is None
    assert m.artifact_type is None


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(body: bytes) -> None:
    try:
        parse_manifest(body, None)
    except ManifestInvalid:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from(["schemaVersion", "mediaType", "config", "layers", "manifests", "subject", "artifactType"]),
        json_values,
    ),
    st.sampled_from([None, OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, "application/json"]),
)
def test_arbitrary_documents_never_crash(doc: dict[str, Any], content_type: str | None) -> None:
    try:
        parse(doc, content_type)
    except ManifestInvalid:
        pass


# -- negotiation -----------------------------------------------------------------

ALL = [DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX]


@pytest.mark.parametrize("media_type", ALL)
@pytest.mark.parametrize("accept", [[], [b""], [b"*/*"], [b"application/*"], [b"text/html, */*;q=0.1"]])
def test_negotiate_accepts_all(accept: list[bytes], media_type: str) -> None:
    assert negotiate(accept, media_type)


def test_negotiate_oci_needs_its_type() -> None:
    docker_only = [f"{DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}".encode()]
    assert not negotiate(docker_only, OCI_MANIFEST)
    assert not negotiate(docker_only, OCI_INDEX)
    assert not negotiate([OCI_MANIFEST.encode()], OCI_INDEX)
    assert not negotiate([b"application/json"], OCI_MANIFEST)
    assert negotiate([DOCKER_MANIFEST.encode(), f"{OCI_MANIFEST}; q=0.5".encode()], OCI_MANIFEST)
    assert negotiate([f"{DOCKER_MANIFEST} ,{OCI_INDEX.upper()};q=0.9".encode()], OCI_INDEX)


def test_negotiate_docker_always_served() -> None:
    assert negotiate([OCI_MANIFEST.encode()], DOCKER_MANIFEST)
    assert negotiate([OCI_INDEX.encode()], DOCKER_MANIFEST_LIST)


def test_accepted_types() -> None:
    assert accepted_types([b"a/b; q=0.5, c/d", "E/F", b" , "]) == {"a/b", "c/d", "e/f"}
