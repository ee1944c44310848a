"""The namespace router: the first regex that matches the whole namespace wins."""

from __future__ import annotations

import re

import pytest

from kraken.backends import BackendError, NoBackend, Router


def test_first_match_wins():
    router = Router([("library/.*", "library"), ("library/ubuntu", "ubuntu"), (".*", "default")])
    assert router.backend_for("library/ubuntu") == "library"
    assert router.backend_for("library/debian") == "library"
    assert router.backend_for("team/app") == "default"


def test_the_whole_namespace_must_match():
    router = Router([("library", "exact"), (re.compile("team/[a-z]+"), "team")])
    assert router.backend_for("library") == "exact"
    with pytest.raises(NoBackend):
        router.backend_for("library/ubuntu")
    with pytest.raises(NoBackend):
        router.backend_for("xlibrary")
    with pytest.raises(NoBackend):
        router.backend_for("team/app2")


def test_no_match_names_the_namespace_and_the_patterns():
    router = Router([("library/.*", "a"), ("team/.*", "b")])
    with pytest.raises(NoBackend) as caught:
        router.backend_for("other/app")
    message = str(caught.value)
    assert "'other/app'" in message and "'library/.*'" in message and "'team/.*'" in message
    assert caught.value.namespace == "other/app"
    assert isinstance(caught.value, BackendError) and isinstance(caught.value, LookupError)


def test_an_empty_router_has_no_backend():
    with pytest.raises(NoBackend, match="none configured"):
        Router([]).backend_for("x")


def test_routes_keep_their_order():
    router = Router([("b", 2), ("a", 1)])
    assert [(p.pattern, b) for p, b in router.routes] == [("b", 2), ("a", 1)]
