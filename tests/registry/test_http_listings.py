"""Tag listing, the catalog and the referrers API (``kraken.registry.http_listings``)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from kraken.core import Digest
from kraken.registry.manifests import OCI_INDEX, OCI_MANIFEST
from kraken.registry.source import ManifestRecord

from .conftest import Registry

LINK = re.compile(r'<(?P<url>[^>]+)>; rel="next"')


def tag(reg: Registry, repo: str, *tags: str) -> None:
    reg.source.add_repo(repo)
    for t in tags:
        reg.source.repos[repo].tags[t] = Digest.from_bytes(t.encode())


def follow(reg: Registry, url: str, key: str) -> tuple[list[str], list[str]]:
    """Every item and every Link URL, following Link until it is absent."""
    items: list[str] = []
    links: list[str] = []
    while True:
        r = reg.get(url)
        assert r.code == 200, r.body
        items += r.json()[key]
        link = r.header("Link")
        if link is None:
            return items, links
        m = LINK.fullmatch(link)
        assert m, link
        url = m.group("url")
        links.append(url)


def test_tags_sorted(registry: Registry) -> None:
    tag(registry, "a/b", "v2", "latest", "V1", "1.0", "_x")
    r = registry.get("/v2/a/b/tags/list")
    assert r.code == 200
    assert r.header("Content-Type") == "application/json"
    assert r.json() == {"name": "a/b", "tags": ["1.0", "V1", "_x", "latest", "v2"]}
    assert r.header("Link") is None


def test_tags_unknown_repository(registry: Registry) -> None:
    r = registry.get("/v2/nope/tags/list")
    assert (r.code, r.error_code) == (404, "NAME_UNKNOWN")
    assert registry.get("/v2/nope/tags/list?n=0").code == 404


def test_tags_empty_repository(registry: Registry) -> None:
    tag(registry, "empty")
    assert registry.get("/v2/empty/tags/list").json() == {"name": "empty", "tags": []}


def test_tags_pagination(registry: Registry) -> None:
    names = [f"t{i:02d}" for i in range(7)]
    tag(registry, "a/b", *names)
    r = registry.get("/v2/a/b/tags/list?n=3")
    assert r.json()["tags"] == names[:3]
    assert r.header("Link") == '</v2/a/b/tags/list?n=3&last=t02>; rel="next"'
    items, links = follow(registry, "/v2/a/b/tags/list?n=3", "tags")
    assert items == names
    assert links == ["/v2/a/b/tags/list?n=3&last=t02", "/v2/a/b/tags/list?n=3&last=t05"]
    r = registry.get("/v2/a/b/tags/list?n=2&last=t04")
    assert r.json()["tags"] == ["t05", "t06"]
    assert r.header("Link") is None
    r = registry.get("/v2/a/b/tags/list?last=t05")
    assert r.json()["tags"] == ["t06"]


def test_tags_n_zero(registry: Registry) -> None:
    tag(registry, "a", "x", "y")
    r = registry.get("/v2/a/tags/list?n=0")
    assert r.json() == {"name": "a", "tags": []}
    assert r.header("Link") is None


@pytest.mark.parametrize("n", ["-1", "abc", "", "1.5"])
def test_tags_bad_n(registry: Registry, n: str) -> None:
    tag(registry, "a", "x")
    r = registry.get(f"/v2/a/tags/list?n={n}")
    assert (r.code, r.error_code) == (400, "PAGINATION_NUMBER_INVALID")


def test_tags_page_size_capped(make_registry: Any) -> None:
    reg = make_registry(max_page_size=2)
    tag(reg, "a", "1", "2", "3", "4", "5")
    r = reg.get("/v2/a/tags/list?n=100")
    assert r.json()["tags"] == ["1", "2"]
    assert r.header("Link") == '</v2/a/tags/list?n=2&last=2>; rel="next"'
    # without n, the cap applies too, and Link leads to the rest
    items, links = follow(reg, "/v2/a/tags/list", "tags")
    assert items == ["1", "2", "3", "4", "5"]
    assert len(links) == 2


def test_catalog(registry: Registry) -> None:
    assert registry.get("/v2/_catalog").json() == {"repositories": []}
    for repo in ("zeta", "alpha/one", "alpha/two", "beta"):
        registry.source.add_repo(repo)
    r = registry.get("/v2/_catalog")
    assert r.json() == {"repositories": ["alpha/one", "alpha/two", "beta", "zeta"]}
    r = registry.get("/v2/_catalog?n=2")
    assert r.json() == {"repositories": ["alpha/one", "alpha/two"]}
    assert r.header("Link") == '</v2/_catalog?n=2&last=alpha/two>; rel="next"'
    items, _ = follow(registry, "/v2/_catalog?n=1", "repositories")
    assert items == ["alpha/one", "alpha/two", "beta", "zeta"]
    r = registry.get("/v2/_catalog?n=0")
    assert (r.json(), r.header("Link")) == ({"repositories": []}, None)
    assert registry.get("/v2/_catalog?n=x").error_code == "PAGINATION_NUMBER_INVALID"


def test_catalog_cap(make_registry: Any) -> None:
    reg = make_registry(max_page_size=3)
    for i in range(5):
        reg.source.add_repo(f"r{i}")
    r = reg.get("/v2/_catalog?n=50")
    assert r.json()["repositories"] == ["r0", "r1", "r2"]
    assert r.header("Link") == '</v2/_catalog?n=3&last=r2>; rel="next"'


# -- referrers ------------------------------------------------------------------------

SUBJECT = Digest.from_bytes(b"subject manifest")


def referrer(reg: Registry, repo: str, seed: str, artifact_type: str, **extra: Any) -> ManifestRecord:
    record = ManifestRecord(
        digest=Digest.from_bytes(seed.encode()),
        media_type=OCI_MANIFEST,
        size=100 + len(seed),
        artifact_type=artifact_type,
        subject=SUBJECT,
        **extra,
    )
    reg.source.add_repo(repo)
    reg.source.repos[repo].manifests[record.digest] = record
    return record


def test_referrers_empty(registry: Registry) -> None:
    r = registry.get(f"/v2/a/referrers/{SUBJECT}")
    assert r.code == 200
    assert r.all("Content-Type") == [OCI_INDEX]
    assert r.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    assert r.header("OCI-Filters-Applied") is None


def test_referrers_listed(registry: Registry) -> None:
    sig = referrer(registry, "a", "sig", "application/vnd.example.sig", annotations={"k": "v"})
    sbom = referrer(registry, "a", "sbom", "application/vnd.example.sbom")
    referrer(registry, "other", "elsewhere", "application/vnd.example.sig")
    r = registry.get(f"/v2/a/referrers/{SUBJECT}")
    manifests = r.json()["manifests"]
    assert sorted(manifests, key=lambda m: m["digest"]) == sorted(
        [sig.descriptor(), sbom.descriptor()], key=lambda m: m["digest"]
    )
    assert {"mediaType": OCI_MANIFEST, "digest": str(sig.digest), "size": sig.size} == {
        k: v for k, v in sig.descriptor().items() if k in ("mediaType", "digest", "size")
    }
    sig_entry = next(m for m in manifests if m["digest"] == str(sig.digest))
    assert sig_entry["artifactType"] == "application/vnd.example.sig"
    assert sig_entry["annotations"] == {"k": "v"}


def test_referrers_filtered(registry: Registry) -> None:
    sig = referrer(registry, "a", "sig", "application/vnd.example.sig")
    referrer(registry, "a", "sbom", "application/vnd.example.sbom")
    r = registry.get(f"/v2/a/referrers/{SUBJECT}?artifactType=application/vnd.example.sig")
    assert r.code == 200
    assert r.header("OCI-Filters-Applied") == "artifactType"
    assert [m["digest"] for m in r.json()["manifests"]] == [str(sig.digest)]
    r = registry.get(f"/v2/a/referrers/{SUBJECT}?artifactType=application/none")
    assert (r.code, r.json()["manifests"]) == (200, [])
    assert r.header("OCI-Filters-Applied") == "artifactType"


def test_referrers_after_push(registry: Registry) -> None:
    registry.push_blob("a", b"{}")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sig",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": str(Digest.from_bytes(b"{}")),
            "size": 2,
        },
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": str(SUBJECT), "size": 16},
    }
    r = registry.put_manifest("a", "sig", doc, OCI_MANIFEST)
    assert r.code == 201
    listed = registry.get(f"/v2/a/referrers/{SUBJECT}").json()["manifests"]
    assert listed == [
        {
            "mediaType": OCI_MANIFEST,
            "digest": r.header("Docker-Content-Digest"),
            "size": len(registry.get("/v2/a/manifests/sig").body),
            "artifactType": "application/vnd.example.sig",
        }
    ]


@pytest.mark.parametrize("digest", ["sha256:abc", "latest"])
def test_referrers_bad_digest(registry: Registry, digest: str) -> None:
    r = registry.get(f"/v2/a/referrers/{digest}")
    assert (r.code, r.error_code) == (400, "DIGEST_INVALID")
