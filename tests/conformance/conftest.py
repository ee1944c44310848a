"""Fixtures of the OCI distribution conformance suite (run against the session's kraken-herd)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from ._registry import Registry

_HERE = __file__.rsplit("/", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.path).startswith(_HERE + "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def registry(http: Any, herd: Any, reactor: Any) -> Registry:
    """The herd's proxy: the read-write registry API, at http://127.0.0.1:<port>."""
    return Registry(http, herd.url, reactor)


def unique_repo(request: pytest.FixtureRequest, suffix: str = "") -> str:
    """A repository name of this test's own, valid per the spec's name grammar."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60].strip("-")
    return f"conformance/{slug}-{uuid.uuid4().hex[:8]}{suffix}"


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    return unique_repo(request)


@pytest.fixture
def other_repo(request: pytest.FixtureRequest) -> str:
    return unique_repo(request, "-other")
