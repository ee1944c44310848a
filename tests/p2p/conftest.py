"""The ``swarm`` fixture: schedulers joined in memory on one clock (``swarm.py``), stopped at the end with no
timer left running."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from swarm import Swarm


@pytest.fixture
def swarm(tmp_path: Any) -> Iterator[Swarm]:
    s = Swarm(tmp_path)
    yield s
    s.stop_and_settle()
