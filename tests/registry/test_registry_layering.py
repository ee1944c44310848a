"""The registry's modules below the Klein app import without the global
reactor, and its router imports nothing of Twisted at all."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    ["source", "routing", "messages", "sessions", "manifests", "names", "errors", "references"],
)
def test_imports_without_the_reactor(module: str) -> None:
    code = f"import sys, kraken.registry.{module}; assert 'twisted.internet.reactor' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_routing_is_pure() -> None:
    code = "import sys, kraken.registry.routing; assert not [m for m in sys.modules if m.startswith('twisted')]"
    subprocess.run([sys.executable, "-c", code], check=True)
