"""Fixtures of the adversarial suite: whole clusters of separate ``twistd`` processes on loopback
(bench/_fleet.py, shared with bench/adversarial.py), and real registry clients (python-dxf) against them.

Every test gets its own fleet and ends by checking that no daemon logged an unhandled error or a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench")
if BENCH not in sys.path:
    sys.path.append(BENCH)

from _fleet import Fleet  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.path).startswith(_HERE + os.sep):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def fleet(tmp_path: Any) -> Iterator[Callable[..., Fleet]]:
    """``fleet(**options)`` starts a ``Fleet`` in the test's directory; all are stopped at the end, and none
    of their daemons may have logged an unhandled error."""
    started: list[Fleet] = []

    def start(**options: Any) -> Fleet:
        f = Fleet(str(tmp_path / f"fleet-{len(started)}"), **options)
        started.append(f)
        return f

    yield start
    errors = {}
    for f in started:
        f.stop()
        errors.update(f.errors())
    assert not errors, f"unhandled errors in the logs: {errors}"
