"""bench/ is not a package: its modules (netns, report, baselines, _swarm, ...) import each other by their bare
names, so the tests of the benchmark harness put bench/ on sys.path the same way."""

from __future__ import annotations

import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench")
if BENCH not in sys.path:
    sys.path.append(BENCH)  # after tests/ and its subdirectories: tests/p2p/swarm.py is another module
