"""The agent API (``AgentHTTP``) through StubTreq, with a fake scheduler and fake health checks."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from agent_fakes import Client, FakeScheduler, layer
from twisted.internet import error, task
from twisted.logger import capturedLogs

from kraken.agent.http import AgentHTTP
from kraken.core import Digest
from kraken.net import HTTPStatusError

NS = "library/alpine"


class Api:
    def __init__(self, tmp_path: Path, clock: task.Clock) -> None:
        self.clock = clock
        self.scheduler = FakeScheduler(tmp_path / "cache")
        self.http = AgentHTTP(self.scheduler)
        self.client = Client(self.http.resource(), clock)


@pytest.fixture
def api(tmp_path: Path, clock: task.Clock) -> Api:
    return Api(tmp_path, clock)


def test_health(api: Api) -> None:
    r = api.client.get("/health")
    assert (r.code, r.body) == (200, b"OK\n")


def test_blob_is_downloaded_then_streamed(api: Api) -> None:
    data = layer("blob", 10_000)
    digest = api.scheduler.add(data)
    r = api.client.get(f"/namespace/{NS}/blobs/{digest}")
    assert r.code == 200
    assert r.body == data
    assert r.header("Content-Type") == "application/octet-stream"
    assert api.scheduler.downloads == [(NS, digest)]


def test_blob_range_and_head(api: Api) -> None:
    data = layer("range", 10_000)
    digest = api.scheduler.add(data)
    r = api.client.get(f"/namespace/{NS}/blobs/{digest}", headers={"Range": "bytes=9000-"})
    assert r.code == 206
    assert r.body == data[9000:]
    assert r.header("Content-Range") == "bytes 9000-9999/10000"
    head = api.client.head(f"/namespace/{NS}/blobs/{digest}")
    assert (head.code, head.body, head.header("Content-Length")) == (200, b"", "10000")


def test_namespace_with_slashes_is_passed_whole(api: Api) -> None:
    digest = api.scheduler.add(b"x")
    assert api.client.get(f"/namespace/a/b/c/blobs/{digest}").body == b"x"
    assert api.scheduler.downloads == [("a/b/c", digest)]


def test_unknown_blob_is_404_json(api: Api) -> None:
    missing = Digest.from_bytes(b"missing")
    r = api.client.get(f"/namespace/{NS}/blobs/{missing}")
    assert r.code == 404
    assert r.header("Content-Type") == "application/json"
    assert str(missing) in r.json()["error"]


@pytest.mark.parametrize(
    "error",
    [HTTPStatusError("GET", "http://tracker/metainfo", 502, b"origin failed"), error.ConnectionRefusedError()],
    ids=["tracker-502", "tracker-down"],
)
def test_a_tracker_failure_is_502_json_not_500(api: Api, error: Exception) -> None:
    digest = api.scheduler.add(b"no metainfo")
    api.scheduler.raising[digest] = error
    r = api.client.get(f"/namespace/{NS}/blobs/{digest}")
    assert r.code == 502
    assert "tracker failed" in r.json()["error"]


def test_failed_download_is_502_json(api: Api) -> None:
    digest = api.scheduler.add(b"stalls")
    api.scheduler.failing.add(digest)
    with capturedLogs() as events:
        r = api.client.get(f"/namespace/{NS}/blobs/{digest}")
    assert r.code == 502
    assert "failed" in r.json()["error"]
    assert [e["digest"] for e in events if "digest" in e] == [str(digest)]


@pytest.mark.parametrize(
    "path",
    [f"/namespace/{NS}/blobs/sha256:abc", f"/namespace/{NS}/blobs/md5:00", "/namespace/UPPER/blobs/sha256:" + "0" * 64],
)
def test_bad_digest_or_namespace_is_400(api: Api, path: str) -> None:
    r = api.client.get(path)
    assert r.code == 400
    assert "invalid" in r.json()["error"]
    assert api.scheduler.downloads == []


def test_unknown_route_and_method_are_json(api: Api) -> None:
    r = api.client.get("/nope")
    assert r.code == 404
    assert "error" in r.json()
    r = api.client.request("DELETE", f"/namespace/{NS}/blobs/sha256:{'0' * 64}")
    assert r.code == 405
    assert "error" in r.json()


def test_stats_are_the_scheduler_counters(api: Api) -> None:
    r = api.client.get("/stats")
    assert r.code == 200
    assert r.header("Content-Type") == "application/json"
    assert r.json() == attrs.asdict(api.scheduler.counters)
    assert r.json()["bytes_in"] == 10
