"""Fixtures of the integration tests: real clients (skopeo, python-dxf) against the session's kraken-herd."""

from __future__ import annotations

from typing import Any

import pytest

from kraken.cli.image import Layout, write_layout

_HERE = __file__.rsplit("/", 1)[0]

BIG_LAYER = "64MiB"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.path).startswith(_HERE + "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def big_image(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """An OCI layout: 3 uncompressed layers (one of 64 MiB seeded random data) and a 2-platform index."""
    return write_layout(
        str(tmp_path_factory.mktemp("big-image") / "layout"),
        tag="v1",
        layers=3,
        random_layer_size=BIG_LAYER,
        seed="integration-big-image",
        index=True,
    )


@pytest.fixture
def registry_ref(herd: Any) -> Any:
    """``registry_ref("repo", "tag")`` -> ``docker://127.0.0.1:<port>/repo:tag``."""

    def ref(repo: str, tag_or_digest: str | None = None) -> str:
        base = f"docker://{herd.registry}/{repo}"
        if tag_or_digest is None:
            return base
        sep = "@" if tag_or_digest.startswith("sha256:") else ":"
        return f"{base}{sep}{tag_or_digest}"

    return ref
