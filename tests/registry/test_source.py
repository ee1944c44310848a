"""The registry source interface (``kraken.registry.source``)."""

from __future__ import annotations

from pathlib import Path

from kraken.registry.source import IRegistrySource

from .memory import MemorySource


def test_memory_source_provides_interface(tmp_path: Path) -> None:
    from zope.interface.verify import verifyObject

    assert verifyObject(IRegistrySource, MemorySource(str(tmp_path)))
