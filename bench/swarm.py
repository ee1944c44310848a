"""The swarm benchmark: one blob requested by N agents at once, every daemon capped at the same rate.

    python bench/swarm.py [--agents 10,25,50] [--runs 3] [--size 64MiB] [--rate 20Mbit] [--piece 1MiB]
                          [--uncapped 1GiB] [--work DIR] [--out FILE]

The code is in bench/_swarm.py (its docstring says what is measured), shared with bench/netbench.py; this file
keeps the command. (A module named ``swarm`` would also clash with tests/p2p/swarm.py when the tests of the
harness put bench/ on sys.path.)
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _swarm import main

if __name__ == "__main__":
    sys.exit(main())
