"""What the write-back tests share (the origin's blob queue and the
build-index's tag queue, both ``kraken.taskqueue.TaskQueue``\\ s).

Import the fixture by its function name; it registers as ``reactor``::

    from writeback_harness import inline_clock  # noqa: F401  (the reactor fixture)
"""

from __future__ import annotations

import pytest
from inline_pool import InlineReactor

#: The clock's time when a test starts: well after 0, so that a task due "at 0" is in the past.
START = 1000.0


@pytest.fixture(name="reactor")
def inline_clock() -> InlineReactor:
    """An ``InlineReactor`` (a Clock whose ``callFromThread`` runs at once) at
    ``START``. It shadows the suite's real-reactor fixture: tests that use it
    never run on the real reactor."""
    r = InlineReactor()
    r.advance(START)
    return r
