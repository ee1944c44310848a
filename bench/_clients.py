"""Real registry clients for the adversarial tests: python-dxf pushes and pulls (blocking; the daemons are
other processes), with a generous timeout as the only backstop."""

from __future__ import annotations

import hashlib
import uuid

from dxf import DXF

MIB = 1 << 20
CLIENT_TIMEOUT = 300.0  # seconds; a safety rail, far above any undisturbed pull


def repo() -> str:
    return f"adversarial/app-{uuid.uuid4().hex[:8]}"


def push(registry: str, name: str, path: str) -> str:
    """Push the file at ``path`` as a blob with python-dxf; its digest."""
    return str(DXF(registry, name, insecure=True, timeout=CLIENT_TIMEOUT).push_blob(path))


def pull(registry: str, name: str, digest: str) -> tuple[str, int]:
    """Pull a blob with python-dxf; (digest of what arrived, bytes)."""
    h = hashlib.sha256()
    total = 0
    for chunk in DXF(registry, name, insecure=True, timeout=CLIENT_TIMEOUT).pull_blob(digest):
        h.update(chunk)
        total += len(chunk)
    return "sha256:" + h.hexdigest(), total
