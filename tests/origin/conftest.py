"""Fixtures for the origin tests."""

from __future__ import annotations

from typing import Any

import pytest
from origin_harness import Origin


@pytest.fixture
def origin(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Origin:
    return Origin(str(tmp_path / "origin"), monkeypatch)
