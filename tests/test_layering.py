"""The house rules: pure layers import without the global reactor, every import points down the house
(DESIGN.md, docs/house.md), components talk to each other through their clients, and only taps touch the
global reactor."""

import ast
import pathlib
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
        "kraken.registry.source",
        "kraken.p2p.wire",
        "kraken.p2p.session",
        "kraken.p2p.dispatch",
        "kraken.p2p.seeding",
        "kraken.p2p.pending",
        "kraken.p2p.dials",
        "kraken.p2p.slots",
        "kraken.registry.routing",
        "kraken.workers",
        "kraken.files",
        "kraken.sqlite",
        "kraken.taskqueue",
        "kraken.throttle",
        "kraken.singleflight",
        "kraken.p2p.protocol",
        "kraken.throttle",
        "kraken.tracker.peers",
        "kraken.tracker.handout",
        "kraken.tracker.redis_peers",  # txredisapi imports the reactor: it is imported only by connect()
        "kraken.tracker.store_config",
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


# --------------------------------------------------------------------------- the arrows of the house

KRAKEN = pathlib.Path(__file__).resolve().parent.parent / "kraken"

#: Each part of the house and its floor: a module may import its own part, and parts on lower floors.
FLOORS = {
    "core": 0,
    "config": 1,
    **dict.fromkeys(["files", "workers", "sqlite", "taskqueue", "throttle", "singleflight", "logs"], 2),
    **dict.fromkeys(["net", "store"], 3),
    "cluster": 4,
    **dict.fromkeys(["backends", "registry", "p2p"], 5),
    **dict.fromkeys(["origin", "tracker", "buildindex", "agent", "proxy", "cli"], 6),
    "herd": 7,
}
COMPONENTS = {"origin", "tracker", "buildindex", "agent", "proxy"}
#: What the herd, which composes the daemons, may use of each: its composition and its configuration.
COMPOSITION = {"tap", "config"}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kraken"


def _imports() -> list[tuple[str, str]]:
    """(importing module, imported kraken module or name) for every import in kraken/."""
    found = []
    for path in sorted(KRAKEN.rglob("*.py")):
        module = ".".join(path.relative_to(KRAKEN.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found += [(module, t) for t in targets if t == "kraken" or t.startswith("kraken.")]
    return found


def _forbidden(module: str, target: str) -> str | None:
    source, dest = _part(module), _part(target)
    if dest in (source, "kraken"):
        return None
    if source not in FLOORS or dest not in FLOORS:
        return f"{source if source not in FLOORS else dest} is not a known part of the house: add it to FLOORS"
    if source in COMPONENTS and dest in COMPONENTS:
        inner = target.split(".")[2:3]
        return None if inner == ["client"] else f"a component talks to {dest} through its client, not {target}"
    if source == "herd" and dest in COMPONENTS:
        inner = target.split(".")[2:3]
        return None if inner and inner[0] in COMPOSITION else f"the herd composes {dest} through its tap and config"
    if FLOORS[dest] >= FLOORS[source]:
        return f"{source} (floor {FLOORS[source]}) may not import {dest} (floor {FLOORS[dest]})"
    return None


def test_every_arrow_points_down():
    wrong = sorted({f"{m} -> {t}: {why}" for m, t in _imports() if (why := _forbidden(m, t))})
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("module", "target", "allowed"),
    [
        ("kraken.backends.s3", "kraken.p2p.scheduler", False),
        ("kraken.backends.s3", "kraken.throttle", True),
        ("kraken.proxy.tap", "kraken.origin.client", True),
        ("kraken.proxy.tap", "kraken.origin.http", False),
        ("kraken.store.cas", "kraken.net.server", False),
        ("kraken.p2p.scheduler", "kraken.store.cas", True),
        ("kraken.core.digest", "kraken.config", False),
        ("kraken.workers", "kraken.store", False),
        ("kraken.herd.tap", "kraken.agent.tap", True),
        ("kraken.herd.tap", "kraken.agent.source", False),
        ("kraken.p2p.scheduler", "kraken.origin.node", False),
    ],
)
def test_the_rule_itself(module, target, allowed):
    assert (_forbidden(module, target) is None) is allowed


def test_only_taps_import_the_global_reactor():
    wrong = []
    for path in sorted(KRAKEN.rglob("*.py")):
        if path.name == "tap.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "twisted.internet":
                if any(a.name == "reactor" for a in node.names):
                    wrong.append(str(path.relative_to(KRAKEN.parent)))
    assert not wrong, wrong
