"""BuildIndexHTTP through StubTreq, over a synchronous TagStore and a fake origin."""

from __future__ import annotations

import json
from typing import Any

import pytest
from buildindex_fakes import App, blob, image_manifest, index_manifest
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import capturedLogs

from kraken.core import Digest
from kraken.net import HTTPStatusError
from kraken.registry.source import ManifestRecord


@pytest.fixture
def app(tmp_path: Any) -> Any:
    a = App(str(tmp_path / "tags.db"), max_page=3)
    yield a
    a.close()


def put_tag(app: App, repo: str, tag: str, digest: Digest | str) -> tuple[int, bytes]:
    return app.request("PUT", f"/repositories/{repo}/tags/{tag}", data=str(digest).encode())


def pushed_image(app: App, seed: str, *, layers: int = 2, oci: bool = False) -> tuple[Digest, list[Digest]]:
    """A manifest with its config and layers, all on the origin."""
    config = f"config {seed}".encode()
    layer_bodies = [f"layer {seed} {i}".encode() for i in range(layers)]
    refs = [app.origin.add(config), *(app.origin.add(b) for b in layer_bodies)]
    return app.origin.add(image_manifest(config, layer_bodies, oci=oci)), refs


def test_health(app: App) -> None:
    assert app.request("GET", "/health") == (200, b"OK\n")


def test_health_fails_when_the_database_does_not_answer(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("database is locked")

    monkeypatch.setattr(app.tags._pool, "runQuery", broken)
    assert app.request("GET", "/health") == (503, b"tag database unavailable\n")


def test_tag_accepted_when_everything_is_on_the_origin(app: App) -> None:
    manifest, refs = pushed_image(app, "x")
    assert put_tag(app, "team/app", "v1", manifest) == (201, str(manifest).encode())
    assert app.request("GET", "/repositories/team/app/tags/v1") == (200, str(manifest).encode())
    stat_calls = [c for c in app.origin.calls if c[0] == "stat"]
    assert sorted(c[2] for c in stat_calls) == sorted(refs)
    assert all(c[1] == "team/app" for c in app.origin.calls)


def test_retag_moves_the_tag(app: App) -> None:
    first, _ = pushed_image(app, "1")
    second, _ = pushed_image(app, "2")
    assert put_tag(app, "r", "latest", first)[0] == 201
    assert put_tag(app, "r", "latest", second)[0] == 200
    assert app.request("GET", "/repositories/r/tags/latest") == (200, str(second).encode())


def test_tag_refused_lists_missing_layers(app: App) -> None:
    config, config_body = blob("config")
    _layer1, layer1_body = blob("layer1")
    layer2, layer2_body = blob("layer2")
    manifest = app.origin.add(image_manifest(config_body, [layer1_body, layer2_body]))
    app.origin.add(layer1_body)
    code, body = put_tag(app, "r", "v1", manifest)
    assert code == 400
    doc = json.loads(body)
    assert sorted(doc["missing"]) == sorted([str(config), str(layer2)])
    assert "missing" in doc["error"]
    assert app.request("GET", "/repositories/r/tags/v1")[0] == 404
    assert app.json("GET", "/repositories/r/tags")[0] == 404


def test_tag_refused_when_the_manifest_is_missing(app: App) -> None:
    missing = Digest.from_bytes(b"never pushed")
    code, doc = app.json("PUT", "/repositories/r/tags/v1", data=str(missing).encode())
    assert (code, doc["missing"]) == (400, [str(missing)])


def test_index_checks_children_and_their_blobs(app: App) -> None:
    child1, _ = pushed_image(app, "amd64", oci=True)
    # child 2 is on the origin but one of its layers is not
    config2, layer2 = b"config arm64", b"layer arm64"
    app.origin.add(config2)
    child2_body = image_manifest(config2, [layer2], oci=True)
    app.origin.add(child2_body)
    # child 3 is not on the origin at all
    child3_body = image_manifest(b"c3", [b"l3"], oci=True)
    child3 = Digest.from_bytes(child3_body)
    index = app.origin.add(index_manifest([app.origin.blobs[child1], child2_body, child3_body]))
    code, doc = app.json("PUT", "/repositories/multi/tags/v1", data=str(index).encode())
    assert code == 400
    assert sorted(doc["missing"]) == sorted([str(Digest.from_bytes(layer2)), str(child3)])

    app.origin.add(layer2)
    app.origin.add(child3_body)
    code, doc = app.json("PUT", "/repositories/multi/tags/v1", data=str(index).encode())
    assert code == 400
    # now child 3's own blobs are the problem
    assert sorted(doc["missing"]) == sorted(str(Digest.from_bytes(b)) for b in (b"c3", b"l3"))

    app.origin.add(b"c3")
    app.origin.add(b"l3")
    assert put_tag(app, "multi", "v1", index)[0] == 201


def test_shared_references_are_checked_once(app: App) -> None:
    config, layer = b"shared config", b"shared layer"
    app.origin.add(config)
    app.origin.add(layer)
    child_a = image_manifest(config, [layer], oci=True)
    child_b = image_manifest(config, [layer, layer], oci=True)
    app.origin.add(child_a)
    app.origin.add(child_b)
    index = app.origin.add(index_manifest([child_a, child_b]))
    assert put_tag(app, "r", "v1", index)[0] == 201
    stats = [c[2] for c in app.origin.calls if c[0] == "stat"]
    assert len(stats) == len(set(stats)) == 2


def test_invalid_manifest_is_refused(app: App) -> None:
    bogus = app.origin.add(b'{"schemaVersion": 1, "fsLayers": []}')
    code, doc = app.json("PUT", "/repositories/r/tags/v1", data=str(bogus).encode())
    assert code == 400
    assert "invalid" in doc["error"]
    assert doc["missing"] == []


def test_oversized_manifest_is_refused(tmp_path: Any) -> None:
    app = App(str(tmp_path / "small.db"), max_manifest_size=64)
    try:
        manifest, _ = pushed_image(app, "big", layers=3)
        code, doc = app.json("PUT", "/repositories/r/tags/v1", data=str(manifest).encode())
        assert code == 400
        assert "larger than 64 bytes" in doc["error"]
    finally:
        app.close()


@pytest.mark.parametrize(
    "body",
    [b"", b"sha256:xyz", b"md5:" + b"a" * 32, b"sha256:" + b"A" * 64, b"\xff\xfe", b"sha256:" + b"a" * 63],
)
def test_bad_tag_body_is_400(app: App, body: bytes) -> None:
    code, doc = app.json("PUT", "/repositories/r/tags/v1", data=body)
    assert code == 400
    assert doc["error"]
    assert app.origin.calls == []


def test_tag_body_too_large_is_413(app: App) -> None:
    assert app.json("PUT", "/repositories/r/tags/v1", data=b"x" * 5000)[0] == 413


@pytest.mark.parametrize(
    "path",
    [
        "/repositories/Upper/tags/v1",
        "/repositories/a//b/tags/v1",
        "/repositories/a/tags/-bad",
        "/repositories/a/tags/" + "t" * 129,
        "/repositories/a/manifests/sha256:" + "0" * 63,
        "/repositories/a/manifests/md5:abc",
        "/repositories/a/referrers/sha256:" + "G" * 64,
    ],
)
def test_bad_names_and_digests_are_400(app: App, path: str) -> None:
    code, doc = app.json("GET", path)
    assert code == 400, doc
    assert doc["error"]


def test_unknown_route_and_method_are_json(app: App) -> None:
    assert app.json("GET", "/nope")[0] == 404
    code, doc = app.json("DELETE", "/repositories/r/tags/v1")
    assert code == 405
    assert doc["error"]


def test_tag_listing_and_pagination(app: App) -> None:
    manifest, _ = pushed_image(app, "x")
    for tag in ["v3", "v1", "V2", "v10", "latest"]:
        assert put_tag(app, "a/b", tag, manifest)[0] == 201
    assert app.json("GET", "/repositories/a/b/tags") == (200, {"tags": ["V2", "latest", "v1"], "more": True})
    assert app.json("GET", "/repositories/a/b/tags?n=2&last=latest") == (200, {"tags": ["v1", "v10"], "more": True})
    assert app.json("GET", "/repositories/a/b/tags?n=2&last=v10") == (200, {"tags": ["v3"], "more": False})
    # n above max_page (3) is capped, not an error
    assert app.json("GET", "/repositories/a/b/tags?n=1000") == (200, {"tags": ["V2", "latest", "v1"], "more": True})
    assert app.json("GET", "/repositories/a/b/tags?n=0") == (200, {"tags": [], "more": True})
    assert app.json("GET", "/repositories/a/tags")[0] == 404


@pytest.mark.parametrize(
    "query", ["n=-1", "n=abc", "n=1.5", "n=1&n=2", "n=9999999999", "last=bad/tag", "last=" + "x" * 300, "n=%20"]
)
def test_bad_pagination_is_400(app: App, query: str) -> None:
    manifest, _ = pushed_image(app, "x")
    put_tag(app, "r", "v1", manifest)
    code, doc = app.json("GET", f"/repositories/r/tags?{query}")
    assert code == 400, query
    assert doc["error"]


def test_repository_listing(app: App) -> None:
    manifest, _ = pushed_image(app, "x")
    for repo in ["b", "a/b", "a", "c/d/e"]:
        put_tag(app, repo, "v1", manifest)
    assert app.json("GET", "/repositories") == (200, {"repositories": ["a", "a/b", "b"], "more": True})
    assert app.json("GET", "/repositories?n=3&last=b") == (200, {"repositories": ["c/d/e"], "more": False})
    assert app.json("GET", "/repositories?last=Bad!")[0] == 400


def record_for(app: App, body: bytes, subject: Digest | None = None, **extra: Any) -> ManifestRecord:
    digest = app.origin.add(body)
    return ManifestRecord(
        digest=digest,
        media_type="application/vnd.oci.image.manifest.v1+json",
        size=len(body),
        subject=subject,
        **extra,
    )


def put_record(app: App, repo: str, record: ManifestRecord, url_digest: Digest | None = None) -> tuple[int, Any]:
    return app.json(
        "PUT",
        f"/repositories/{repo}/manifests/{url_digest or record.digest}",
        data=json.dumps(record.to_json()).encode(),
    )


def test_manifest_records(app: App) -> None:
    record = record_for(app, b"manifest one", annotations={"org.opencontainers.image.title": "x"})
    assert put_record(app, "a/b", record) == (201, record.to_json())
    assert put_record(app, "a/b", record)[0] == 200
    code, doc = app.json("GET", f"/repositories/a/b/manifests/{record.digest}")
    assert code == 200
    assert ManifestRecord.from_json(doc) == record
    assert app.json("GET", f"/repositories/other/manifests/{record.digest}")[0] == 404
    # a repository with only manifest records is listed, with no tags
    assert app.json("GET", "/repositories/a/b/tags") == (200, {"tags": [], "more": False})
    assert app.json("GET", "/repositories")[1]["repositories"] == ["a/b"]


def test_manifest_record_refusals(app: App) -> None:
    record = record_for(app, b"manifest")
    other = Digest.from_bytes(b"other")
    code, doc = put_record(app, "r", record, url_digest=other)
    assert code == 400 and "does not match" in doc["error"]

    absent = ManifestRecord(digest=other, media_type="application/vnd.oci.image.manifest.v1+json", size=5)
    code, doc = put_record(app, "r", absent)
    assert (code, doc["missing"]) == (400, [str(other)])

    wrong_size = ManifestRecord(digest=record.digest, media_type=record.media_type, size=record.size + 1)
    assert put_record(app, "r", wrong_size)[0] == 400
    assert app.json("GET", f"/repositories/r/manifests/{record.digest}")[0] == 404


@pytest.mark.parametrize(
    "doc",
    [
        "not json",
        [],
        {"digest": "sha256:zz", "media_type": "x/y", "size": 1},
        {"size": 1},
        {"media_type": "", "size": 1},
        {"digest": None, "media_type": "x/y", "size": "1"},
        {"media_type": "x/y", "size": -1},
        {"media_type": "x/y", "size": 1, "annotations": {"a": 1}},
        {"media_type": "x/y", "size": 1, "surprise": True},
    ],
)
def test_bad_manifest_record_is_400(app: App, doc: Any) -> None:
    digest = app.origin.add(b"m")
    if isinstance(doc, dict) and "digest" not in doc:
        doc = {"digest": str(digest), **doc}
    body = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
    code, answer = app.json("PUT", f"/repositories/r/manifests/{digest}", data=body)
    assert code == 400, answer


def test_referrers(app: App) -> None:
    subject = Digest.from_bytes(b"subject")
    sig = record_for(app, b"signature", subject=subject, artifact_type="application/vnd.example.sig")
    sbom = record_for(app, b"sbom", subject=subject, artifact_type="application/spdx+json")
    plain = record_for(app, b"plain")
    for r in (sig, sbom, plain):
        assert put_record(app, "r", r)[0] == 201
    code, doc = app.json("GET", f"/repositories/r/referrers/{subject}")
    assert code == 200
    got = [ManifestRecord.from_json(m) for m in doc["manifests"]]
    assert sorted(got, key=str) == sorted([sig, sbom], key=str)
    assert app.json("GET", f"/repositories/other/referrers/{subject}") == (200, {"manifests": []})


def test_origin_failure_is_503_and_logged(app: App) -> None:
    manifest, _ = pushed_image(app, "x")
    app.origin.error = HTTPStatusError("GET", "http://origin/x", 500)
    with capturedLogs() as events:
        code, doc = app.json("PUT", "/repositories/r/tags/v1", data=str(manifest).encode())
    assert code == 503
    assert "origin unavailable" in doc["error"]
    assert any(e.get("what", "").startswith("read manifest") for e in events)
    app.origin.error = ConnectionRefusedError()
    assert put_tag(app, "r", "v1", manifest)[0] == 503


def test_unexpected_failure_is_500_and_logged(app: App) -> None:
    async def broken(*args: Any) -> None:
        raise ZeroDivisionError("boom")

    app.tags.get_tag = broken  # type: ignore[method-assign]
    with capturedLogs() as events:
        code, doc = app.json("GET", "/repositories/r/tags/v1")
    assert (code, doc) == (500, {"error": "internal error"})
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(ZeroDivisionError)
    assert failures[0]["path"] == "/repositories/r/tags/v1"


def test_nested_index_checks_grandchildren(app: App) -> None:
    config, layer = b"nested config", b"nested layer"
    app.origin.add(config)
    leaf = image_manifest(config, [layer], oci=True)
    app.origin.add(leaf)
    inner = index_manifest([leaf])
    app.origin.add(inner)
    outer = app.origin.add(index_manifest([inner]))
    code, doc = app.json("PUT", "/repositories/r/tags/v1", data=str(outer).encode())
    assert (code, doc["missing"]) == (400, [str(Digest.from_bytes(layer))])
    app.origin.add(layer)
    assert put_tag(app, "r", "v1", outer)[0] == 201


def test_a_manifest_with_too_many_references_is_refused_before_any_lookup(tmp_path: Any) -> None:
    app = App(str(tmp_path / "tags.db"), max_references=100)
    try:
        manifest = app.origin.add(image_manifest(b"config", [b"layer %d" % i for i in range(200)]))
        code, doc = app.json("PUT", "/repositories/r/tags/v1", data=str(manifest).encode())
        assert code == 400
        assert doc["error"] == (
            f"manifest {manifest} has 201 references (blobs and manifests); at most 100 are accepted"
        )
        assert doc["missing"] == []
        assert [c[0] for c in app.origin.calls] == ["read"]  # the manifest itself, nothing it names
    finally:
        app.close()


def test_blobs_are_checked_in_batches(tmp_path: Any) -> None:
    app = App(str(tmp_path / "tags.db"))
    try:
        layers = [b"layer %d" % i for i in range(250)]
        for body in [b"config", *layers]:
            app.origin.add(body)
        manifest = app.origin.add(image_manifest(b"config", layers))
        assert put_tag(app, "r", "v1", manifest)[0] == 201
        assert [len(b) for b in app.origin.batches] == [100, 100, 51]
    finally:
        app.close()
