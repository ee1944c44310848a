"""The registry API (proxy and agent) with a full disk: 507 with OCI JSON,
the upload and its session gone, and pushes working again once there is space."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from full_disk import Room, filling_open, no_space
from results import result_of
from twisted.python.failure import Failure

from kraken.agent.source import AgentSource
from kraken.core import Digest
from kraken.files import OutOfSpace
from kraken.registry.errors import InsufficientStorage
from kraken.registry.http import RegistryAPI

from .conftest import Registry

DATA = os.urandom(300_000)
DIGEST = Digest.from_bytes(DATA)


def assert_no_space(r: Any, reason: str = "ENOSPC") -> None:
    assert r.code == 507
    assert r.header("Content-Type") == "application/json"
    [error] = r.json()["errors"]
    assert error["code"] == "UNKNOWN"
    assert error["message"].startswith("no space left on device")
    assert error["detail"]["reason"] == reason


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_chunk_that_fills_the_disk_is_507_and_the_upload_is_gone(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    import kraken.store.uploads as uploads_module

    location = registry.start_upload("team/app")
    monkeypatch.setattr(uploads_module, "open", filling_open(Room(1000, code)), raising=False)
    r = registry.request("PATCH", location, body=DATA, headers={"Content-Type": "application/octet-stream"})
    assert_no_space(r, errno.errorcode[code])
    assert os.listdir(registry.uploads._root) == []  # type: ignore[union-attr]
    assert registry.get(location).error_code == "BLOB_UPLOAD_UNKNOWN", "the session went with the upload"
    monkeypatch.delattr(uploads_module, "open")
    assert registry.push_blob("team/app", DATA) == DIGEST


def test_a_refused_body_is_answered_as_oci_json_and_drops_its_session(registry: Registry) -> None:
    import json

    location = registry.start_upload("team/app")
    uid = location.rsplit("/", 1)[1]
    refusal = result_of(registry.api.body_refused(b"PATCH", location.encode(), Failure(no_space())))
    assert refusal.status == 507
    assert dict(refusal.headers)[b"Content-Type"] == b"application/json"
    assert json.loads(refusal.body)["errors"][0]["message"].startswith("no space left on device")
    assert os.listdir(registry.uploads._root) == []  # type: ignore[union-attr]
    assert uid not in registry.api.sessions
    other = result_of(registry.api.body_refused(b"PUT", b"/v2/x/manifests/latest", Failure(OSError(errno.EIO, "EIO"))))
    assert other.status == 500


class FullOrigin:
    """A source whose blob store (the origin cluster) is full."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def commit_blob(self, repo: str, digest: Digest, path: str, size: int, upload: str = "") -> None:
        raise InsufficientStorage("no space left on device: the origin cluster cannot store this blob now")


def test_a_full_origin_is_relayed_and_the_proxys_upload_deleted(tmp_path: Path, clock: Any) -> None:
    registry = Registry(tmp_path, clock)
    registry.api = RegistryAPI(FullOrigin(registry.source), registry.uploads, clock=clock)
    from treq.testing import StubTreq

    registry.stub = StubTreq(registry.api.resource())
    location = registry.start_upload("team/app")
    r = registry.request("PUT", f"{location}?digest={DIGEST}", body=DATA)
    assert r.code == 507 and r.error_code == "UNKNOWN"
    assert "origin cluster" in r.json()["errors"][0]["message"]
    assert os.listdir(registry.uploads._root) == []  # type: ignore[union-attr]
    assert registry.get(location).error_code == "BLOB_UPLOAD_UNKNOWN"


class FullScheduler:
    def __init__(self) -> None:
        self.full = True

    async def download(self, namespace: str, digest: Digest) -> str:
        if self.full:
            raise OutOfSpace(f"downloading {digest}", no_space())
        raise AssertionError("not reached")


class NoTags:
    async def get_tag(self, repo: str, tag: str) -> Digest | None:
        return None


def test_an_agent_whose_disk_is_full_answers_507(tmp_path: Path, clock: Any) -> None:
    from treq.testing import StubTreq

    from kraken.workers import InlineWorker

    registry = Registry(tmp_path, clock, with_uploads=False, read_only=True)
    source = AgentSource(FullScheduler(), NoTags(), worker=InlineWorker(), max_manifest_size=1 << 20)
    registry.api = RegistryAPI(source, None, clock=clock, read_only=True)
    registry.stub = StubTreq(registry.api.resource())
    assert_no_space(registry.get(f"/v2/team/app/blobs/{DIGEST}"))
    assert_no_space(registry.get(f"/v2/team/app/manifests/{DIGEST}"))
