"""The agent's domain modules import without the global reactor, and reach
other components only through their clients."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "kraken" / "agent"


def test_agent_domain_modules_import_without_the_reactor() -> None:
    # Not http.py: importing klein installs the default reactor (as for every daemon's http.py).
    code = "import sys, kraken.agent.config, kraken.agent.source; assert 'twisted.internet.reactor' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_other_components_only_through_their_clients() -> None:
    components = ("origin", "tracker", "buildindex", "proxy", "herd")
    for path in AGENT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[0] == "kraken" and len(parts) > 1 and parts[1] in components:
                    assert parts[2:] == ["client"], f"{path.name} imports {node.module}"
