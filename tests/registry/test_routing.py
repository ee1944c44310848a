"""The registry's own router (``kraken.registry.routing``): pure, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kraken.core import Digest
from kraken.registry.routing import ALLOWED, Route, match_route

D = Digest.from_bytes(b"x")


@pytest.mark.parametrize(
    ("path", "route"),
    [
        (b"/v2/", Route("base")),
        (b"/v2", Route("base")),
        (b"/v2/_catalog", Route("catalog")),
        (b"/v2/a/_catalog", None),
        (b"/v2/a/b/tags/list", Route("tags", "a/b")),
        (b"/v2/a/manifests/tags/list", Route("tags", "a/manifests")),
        (b"/v2/a/manifests/latest", Route("manifest", "a", "latest")),
        (b"/v2/a/manifests/sha256%3Aab", Route("manifest", "a", "sha256:ab")),
        (b"/v2/a/blobs/uploads/", Route("upload_start", "a")),
        (b"/v2/a/blobs/uploads", Route("upload_start", "a")),
        (b"/v2/a/blobs/uploads/u1", Route("upload", "a", "u1")),
        (b"/v2/a/blobs/uploads/blobs/uploads/", Route("upload_start", "a/blobs/uploads")),
        (b"/v2/a/blobs/uploads/blobs/d", Route("blob", "a/blobs/uploads", "d")),
        (b"/v2/a/b/blobs/d", Route("blob", "a/b", "d")),
        (b"/v2/a/referrers/d", Route("referrers", "a", "d")),
        (b"/v2/a%2Fb/tags/list", Route("tags", "a%2Fb")),
        (b"/v2/tags/list", None),
        (b"/v2/a", None),
        (b"/v2/a/b/c", None),
        (b"/v2x/a/tags/list", None),
        (b"/", None),
        (b"/health", None),
    ],
)
def test_match_route(path: bytes, route: Route | None) -> None:
    assert match_route(path) == route


_NAMES = st.from_regex(r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*", fullmatch=True)


@given(_NAMES, st.sampled_from(["tags", "manifest", "blob", "upload_start", "upload", "referrers"]))
def test_every_valid_name_routes_back(name: str, kind: str) -> None:
    suffix = {
        "tags": ("tags/list", ""),
        "manifest": ("manifests/latest", "latest"),
        "blob": (f"blobs/{D}", str(D)),
        "upload_start": ("blobs/uploads/", ""),
        "upload": ("blobs/uploads/0123", "0123"),
        "referrers": (f"referrers/{D}", str(D)),
    }[kind]
    assert match_route(f"/v2/{name}/{suffix[0]}".encode()) == Route(kind, name, suffix[1])


@pytest.mark.parametrize(
    ("kind", "allow"),
    [
        ("base", "GET, HEAD"),
        ("catalog", "GET, HEAD"),
        ("tags", "GET, HEAD"),
        ("referrers", "GET, HEAD"),
        ("manifest", "GET, HEAD, PUT, DELETE"),
        ("blob", "GET, HEAD, DELETE"),
        ("upload_start", "POST"),
        ("upload", "GET, HEAD, PATCH, PUT, DELETE"),
    ],
)
def test_allowed_methods_in_allow_order(kind: str, allow: str) -> None:
    assert ", ".join(m.decode() for m in Route(kind).allowed) == allow


def test_only_base_and_catalog_are_outside_a_repository() -> None:
    assert [k for k in ALLOWED if not Route(k).has_name] == ["base", "catalog"]
