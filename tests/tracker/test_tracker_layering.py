"""kraken.core.peer is pure: no reactor, nothing of ours outside core."""

from __future__ import annotations

import subprocess
import sys


def test_core_peer_is_pure() -> None:
    code = (
        "import sys, kraken.core.peer; "
        "assert 'twisted.internet.reactor' not in sys.modules; "
        "ours = sorted(m for m in sys.modules if m.startswith('kraken.') and not m.startswith('kraken.core')); "
        "assert not ours, ours"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tracker_domain_modules_import_without_the_reactor() -> None:
    # Not http.py: importing klein installs the default reactor (as for every daemon's http.py).
    modules = ", ".join(f"kraken.tracker.{m}" for m in ("peers", "handout", "config", "client", "origins"))
    code = f"import sys, {modules}; assert 'twisted.internet.reactor' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
