"""Small file operations shared by the stores, backends and daemons (blocking: run them in a worker)."""

from __future__ import annotations

import os


def remove_quietly(path: str) -> None:
    """Delete ``path`` if it is there; a file already gone is not an error."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
