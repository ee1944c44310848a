"""The house rule: pure layers import without the global reactor."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "kraken.core",
        "kraken.store",
        "kraken.config",
        "kraken.net",
        "kraken.registry.backend",
        "kraken.p2p.wire",
        "kraken.p2p.session",
        "kraken.p2p.dispatch",
        "kraken.p2p.protocol",
        "kraken.throttle",
        "kraken.tracker.peers",
        "kraken.tracker.handout",
        "kraken.cluster.ring",
        "kraken.cluster.hosts",
        "kraken.cluster.health",
        "kraken.cluster.config",
    ],
)
def test_imports_without_reactor(module):
    code = f"import sys, {module}; assert 'twisted.internet.reactor' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_core_imports_nothing_of_ours_beyond_itself():
    code = (
        "import sys, kraken.core; "
        "ours = sorted(m for m in sys.modules if m.startswith('kraken.') and not m.startswith('kraken.core')); "
        "assert not ours, ours"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
