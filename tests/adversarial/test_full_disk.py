"""A full disk (a real tmpfs) under the origins' store, the proxy's upload area or an agent's store: the client
gets 507 with an OCI error that says the registry is out of space, nothing half-written stays behind, and the
next push or pull that fits works at once."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import requests
from _clients import MIB, pull, push, repo
from _daemons import write_blob
from _fleet import Fleet


def files_under(root: str, *parts: str) -> list[str]:
    found = []
    for top, _, names in os.walk(os.path.join(root, *parts)):
        found += [os.path.relpath(os.path.join(top, n), root) for n in names]
    return found


def refused_push(registry: str, name: str, path: str) -> dict[str, Any]:
    """Push that must be refused for want of space; the OCI error."""
    with pytest.raises(requests.HTTPError) as caught:
        push(registry, name, path)
    response = caught.value.response
    assert response is not None and response.status_code == 507
    assert response.headers["Content-Type"] == "application/json"
    (error,) = response.json()["errors"]
    assert error["code"] == "UNKNOWN"
    assert error["message"].startswith("no space left on device")
    assert error["detail"]["reason"] == "ENOSPC"
    return dict(error)


def test_full_origin_stores(fleet: Callable[..., Fleet], tmp_path: Any) -> None:
    f = fleet(origins=2, agents=0, tmpfs={"origin-0": "64m", "origin-1": "64m"})
    name = repo()
    big = str(tmp_path / "big")
    write_blob(big, 100 * MIB)
    error = refused_push(f.proxy, name, big)
    assert "origin cluster" in error["message"]
    for i in range(2):
        root = f.root(f"origin-{i}")
        assert files_under(root, "uploads") == [] and files_under(root, "tmp") == []
        assert files_under(root, "cache") == []
    assert files_under(f.root("proxy-uploads")) == []
    # What fits is stored at once: nothing of the refused push holds space, and no daemon is stuck.
    small = str(tmp_path / "small")
    digest = write_blob(small, 16 * MIB)
    assert push(f.proxy, name, small) == digest
    assert pull(f.proxy, name, digest) == (digest, 16 * MIB)


def test_a_full_proxy_upload_area(fleet: Callable[..., Fleet], tmp_path: Any) -> None:
    f = fleet(origins=2, agents=0, tmpfs={"proxy-uploads": "16m"})
    name = repo()
    big = str(tmp_path / "big")
    write_blob(big, 32 * MIB)
    error = refused_push(f.proxy, name, big)
    assert "registry" in error["message"]
    assert files_under(f.root("proxy-uploads")) == []
    small = str(tmp_path / "small")
    digest = write_blob(small, 4 * MIB)
    assert push(f.proxy, name, small) == digest


def test_a_full_agent_store(fleet: Callable[..., Fleet], tmp_path: Any) -> None:
    f = fleet(origins=2, agents=1, tmpfs={"agent-0": "8m"})
    name = repo()
    big, small = str(tmp_path / "big"), str(tmp_path / "small")
    big_digest, small_digest = write_blob(big, 16 * MIB), write_blob(small, 2 * MIB)
    assert push(f.proxy, name, big) == big_digest
    assert push(f.proxy, name, small) == small_digest
    with pytest.raises(requests.HTTPError) as caught:
        pull(f.registry(0), name, big_digest)
    response = caught.value.response
    assert response is not None and response.status_code == 507
    (error,) = response.json()["errors"]
    assert error["message"].startswith("no space left on device")
    assert files_under(f.root("agent-0"), "downloads") == []
    assert pull(f.registry(0), name, small_digest) == (small_digest, 2 * MIB)
