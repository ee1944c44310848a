"""The size rule of the house (DESIGN.md): a module over 500 lines, a class over 300 or a function over 60 holds
two things. This test keeps every part of kraken/ under those limits, so a growing piece is split when it
grows, not in a later clean-up."""

from __future__ import annotations

import ast
import pathlib

KRAKEN = pathlib.Path(__file__).resolve().parent.parent / "kraken"
MODULE_LINES, CLASS_LINES, FUNCTION_LINES = 500, 300, 60


def oversized(path: pathlib.Path, root: pathlib.Path = KRAKEN.parent) -> list[str]:
    source = path.read_text()
    name = path.relative_to(root)
    found = []
    lines = source.count("\n")
    if lines > MODULE_LINES:
        found.append(f"{name}: {lines} lines (at most {MODULE_LINES})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            limit = CLASS_LINES if isinstance(node, ast.ClassDef) else FUNCTION_LINES
            if length > limit:
                found.append(f"{name}:{node.lineno} {node.name}: {length} lines (at most {limit})")
    return found


def test_no_module_class_or_function_is_over_its_limit() -> None:
    found = [entry for path in sorted(KRAKEN.rglob("*.py")) for entry in oversized(path)]
    assert not found, "\n".join(found)


def test_the_rule_sees_an_oversized_function(tmp_path: pathlib.Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(FUNCTION_LINES))
    path = tmp_path / "probe.py"
    path.write_text(f"def f():\n{body}\n")
    assert oversized(path, tmp_path) == [f"probe.py:1 f: {FUNCTION_LINES + 1} lines (at most 60)"]
