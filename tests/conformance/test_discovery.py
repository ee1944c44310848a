"""Content discovery: tag listing with pagination, the catalog, referrers (end-8, end-12, Docker `_catalog`)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest_twisted

from ._registry import (
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Registry,
    Response,
    assert_error,
    digest_of,
    dumps,
    next_link,
    unknown_digest,
    with_query,
)

TAGS = ["v1", "latest", "A_upper", "b", "a", "10", "9", "a-1", "a.b", "Z", "_under"]


async def push_tags(registry: Registry, repo: str, tags: list[str]) -> None:
    image = await registry.push_image(repo, tags[0])
    for tag in tags[1:]:
        await registry.push_manifest(repo, tag, image.manifest, image.media_type)


def tags_of(resp: Response, repo: str) -> list[str]:
    assert resp.status == 200, str(resp)
    doc = resp.json()
    assert doc["name"] == repo, doc
    return list(doc["tags"] or [])


@pytest_twisted.ensureDeferred
async def test_tags_are_listed_sorted(registry: Registry, repo: str) -> None:
    await push_tags(registry, repo, TAGS)
    resp = await registry.request("GET", f"/v2/{repo}/tags/list")
    assert (
        resp.header(
            "Content-Type",
        ).split(";")[0]
        == "application/json"
    )  # type: ignore[union-attr]
    assert tags_of(resp, repo) == sorted(TAGS)
    assert next_link(resp) is None


@pytest_twisted.ensureDeferred
async def test_tags_pagination_with_n_and_last(registry: Registry, repo: str) -> None:
    await push_tags(registry, repo, TAGS)
    expected = sorted(TAGS)

    # Follow Link until it is absent: pages of at most n, in order, with nothing lost or repeated.
    seen: list[str] = []
    url: str | None = registry.url(f"/v2/{repo}/tags/list?n=3")
    pages = 0
    while url is not None:
        resp = await registry.request("GET", url)
        page = tags_of(resp, repo)
        assert 0 < len(page) <= 3, page
        seen += page
        url = next_link(resp)
        pages += 1
        assert pages <= len(TAGS), "Link never ends"
    assert seen == expected

    # n and last explicitly.
    resp = await registry.request("GET", f"/v2/{repo}/tags/list?n=2&last={expected[3]}")
    assert tags_of(resp, repo) == expected[4:6]
    link = next_link(resp)
    assert link is not None, f"{resp}: no Link although more tags follow"
    assert "n=2" in link and f"last={expected[5]}" in link, link

    # last alone: everything after it.
    resp = await registry.request("GET", f"/v2/{repo}/tags/list?last={expected[-3]}")
    assert tags_of(resp, repo) == expected[-2:]

    # the last page has no Link.
    resp = await registry.request("GET", f"/v2/{repo}/tags/list?n=2&last={expected[-3]}")
    assert tags_of(resp, repo) == expected[-2:]
    assert next_link(resp) is None


@pytest_twisted.ensureDeferred
async def test_tags_n_zero_is_empty_without_link(registry: Registry, repo: str) -> None:
    await push_tags(registry, repo, ["one", "two"])
    resp = await registry.request("GET", f"/v2/{repo}/tags/list?n=0")
    assert tags_of(resp, repo) == []
    assert resp.header_values("Link") == []


@pytest_twisted.ensureDeferred
async def test_tags_of_an_unknown_repository_is_404(registry: Registry, repo: str) -> None:
    resp = await registry.request("GET", f"/v2/{repo}/tags/list")
    assert_error(resp, 404, "NAME_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_catalog_lists_repositories_sorted_with_pagination(registry: Registry) -> None:
    prefix = f"catalog-{uuid.uuid4().hex[:8]}"
    repos = [f"{prefix}/c", f"{prefix}/a", f"{prefix}/b/nested", f"{prefix}/b"]
    for r in repos:
        await registry.push_image(r, "v1", layers=1)
    ours = sorted(repos)

    # The whole catalog, page by page: sorted, no repeats, all of ours.
    everything: list[str] = []
    url: str | None = registry.url("/v2/_catalog?n=2")
    while url is not None:
        resp = await registry.request("GET", url)
        assert resp.status == 200, str(resp)
        page = resp.json()["repositories"]
        assert len(page) <= 2, page
        everything += page
        url = next_link(resp)
        assert len(everything) < 100_000, "Link never ends"
    assert everything == sorted(everything), "the catalog is not sorted across pages"
    assert len(everything) == len(set(everything)), "the catalog repeats repositories"
    assert [r for r in everything if r.startswith(prefix + "/")] == ours

    # n and last: nothing else sorts between our names.
    resp = await registry.request("GET", with_query(registry.url("/v2/_catalog"), n="2", last=ours[0]))
    assert resp.status == 200, str(resp)
    assert resp.json()["repositories"] == ours[1:3]
    link = next_link(resp)
    assert link is not None and "n=2" in link, f"{resp}: Link {link!r}"

    # n=0: empty, no Link.
    resp = await registry.request("GET", "/v2/_catalog?n=0")
    assert resp.status == 200, str(resp)
    assert resp.json()["repositories"] == []
    assert resp.header_values("Link") == []


# ---- referrers


def artifact_manifest(subject: dict[str, Any], artifact_type: str, note: str) -> bytes:
    return dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": OCI_EMPTY, "digest": digest_of(EMPTY_JSON), "size": len(EMPTY_JSON)},
            "layers": [{"mediaType": OCI_EMPTY, "digest": digest_of(EMPTY_JSON), "size": len(EMPTY_JSON)}],
            "subject": subject,
            "annotations": {"org.example.note": note},
        },
        pretty=True,
    )


def referrers_of(resp: Response) -> list[dict[str, Any]]:
    assert resp.status == 200, str(resp)
    assert resp.header("Content-Type") == OCI_INDEX, resp.header("Content-Type")
    doc = json.loads(resp.body)
    assert doc["schemaVersion"] == 2 and doc.get("mediaType") == OCI_INDEX, doc
    return list(doc["manifests"])


@pytest_twisted.ensureDeferred
async def test_referrers(registry: Registry, repo: str) -> None:
    image = await registry.push_image(repo, "v1")
    await registry.push_blob(repo, EMPTY_JSON)
    subject = image.descriptor()
    sbom = artifact_manifest(subject, "application/vnd.example.sbom", "sbom")
    sig = artifact_manifest(subject, "application/vnd.example.signature", "sig")
    for body in (sbom, sig):
        resp = await registry.put_manifest(repo, digest_of(body), body, OCI_MANIFEST)
        assert resp.status == 201, str(resp)
        assert resp.header("OCI-Subject") == image.digest, f"{resp}: OCI-Subject {resp.header('OCI-Subject')!r}"

    resp = await registry.request("GET", f"/v2/{repo}/referrers/{image.digest}")
    listed = referrers_of(resp)
    by_digest = {d["digest"]: d for d in listed}
    assert set(by_digest) == {digest_of(sbom), digest_of(sig)}, listed
    for body, artifact_type, note in (
        (sbom, "application/vnd.example.sbom", "sbom"),
        (sig, "application/vnd.example.signature", "sig"),
    ):
        d = by_digest[digest_of(body)]
        assert d["mediaType"] == OCI_MANIFEST
        assert d["size"] == len(body)
        assert d["artifactType"] == artifact_type
        assert d.get("annotations", {}).get("org.example.note") == note
    assert resp.header_values("OCI-Filters-Applied") == []

    filtered = await registry.request(
        "GET",
        with_query(registry.url(f"/v2/{repo}/referrers/{image.digest}"), artifactType="application/vnd.example.sbom"),
    )
    assert [d["digest"] for d in referrers_of(filtered)] == [digest_of(sbom)]
    assert filtered.header("OCI-Filters-Applied") == "artifactType"


@pytest_twisted.ensureDeferred
async def test_referrer_without_artifact_type_is_listed_with_its_config_media_type(
    registry: Registry, repo: str
) -> None:
    image = await registry.push_image(repo, "v1")
    await registry.push_blob(repo, EMPTY_JSON)
    doc = json.loads(artifact_manifest(image.descriptor(), "unused", "config-typed"))
    del doc["artifactType"]
    doc["config"]["mediaType"] = "application/vnd.example.config.v1+json"
    body = dumps(doc, pretty=False)
    resp = await registry.put_manifest(repo, digest_of(body), body, OCI_MANIFEST)
    assert resp.status == 201, str(resp)
    [listed] = referrers_of(await registry.request("GET", f"/v2/{repo}/referrers/{image.digest}"))
    assert listed["digest"] == digest_of(body)
    assert listed["artifactType"] == "application/vnd.example.config.v1+json"


@pytest_twisted.ensureDeferred
async def test_index_with_subject_is_a_referrer(registry: Registry, repo: str) -> None:
    image = await registry.push_image(repo, "v1")
    member = await registry.push_image(repo, None)
    body = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": "application/vnd.example.bundle",
            "manifests": [member.descriptor()],
            "subject": image.descriptor(),
        },
        pretty=True,
    )
    resp = await registry.put_manifest(repo, digest_of(body), body, OCI_INDEX)
    assert resp.status == 201, str(resp)
    assert resp.header("OCI-Subject") == image.digest
    [listed] = referrers_of(await registry.request("GET", f"/v2/{repo}/referrers/{image.digest}"))
    assert listed["digest"] == digest_of(body)
    assert listed["mediaType"] == OCI_INDEX
    assert listed["artifactType"] == "application/vnd.example.bundle"
    assert listed["size"] == len(body)


@pytest_twisted.ensureDeferred
async def test_referrers_of_a_subject_without_referrers_is_an_empty_index(registry: Registry, repo: str) -> None:
    image = await registry.push_image(repo, "v1")
    for subject in (image.digest, unknown_digest()):
        resp = await registry.request("GET", f"/v2/{repo}/referrers/{subject}")
        assert referrers_of(resp) == []


@pytest_twisted.ensureDeferred
async def test_subject_may_point_at_a_missing_manifest(registry: Registry, repo: str) -> None:
    await registry.push_blob(repo, EMPTY_JSON)
    missing = {"mediaType": OCI_MANIFEST, "digest": unknown_digest(), "size": 1234}
    body = artifact_manifest(missing, "application/vnd.example.sbom", "orphan")
    resp = await registry.put_manifest(repo, digest_of(body), body, OCI_MANIFEST)
    assert resp.status == 201, str(resp)
    assert resp.header("OCI-Subject") == missing["digest"]
    listed = referrers_of(await registry.request("GET", f"/v2/{repo}/referrers/{missing['digest']}"))
    assert [d["digest"] for d in listed] == [digest_of(body)]
