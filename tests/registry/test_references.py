"""A pushed manifest's references: the limit, the batches, the early stop,
and the client going away mid-check."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.web.server import Site

from kraken.core import Digest
from kraken.registry.manifests import OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST
from kraken.registry.references import ReferencePolicy
from kraken.registry.source import ManifestRecord

from .conftest import Registry
from .memory import MemorySource

CONFIG = Digest.from_bytes(b"config")


def fake(n: int, seed: str = "layer") -> list[Digest]:
    return [Digest(hashlib.sha256(f"{seed}{i}".encode()).hexdigest()) for i in range(n)]


def image(layers: list[Digest]) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": str(CONFIG), "size": 6},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": str(d), "size": 1} for d in layers],
    }


def index(children: list[Digest]) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": str(d), "size": 1} for d in children],
    }


class Everything(MemorySource):
    """Holds every blob and every manifest asked about."""

    async def stat_blobs(self, repo: str, digests: list[Digest]) -> dict[Digest, int | None]:
        self.calls.append(("stat_blobs", tuple(digests)))
        return dict.fromkeys(digests, 1)

    async def get_manifest(self, repo: str, digest: Digest) -> ManifestRecord | None:
        self.calls.append(("get_manifest", (repo, digest)))
        return ManifestRecord(digest, OCI_MANIFEST, 1)


class Hanging(MemorySource):
    """Lookups that answer only when the test says so."""

    def __init__(self, blob_dir: str) -> None:
        super().__init__(blob_dir)
        self.waiting: list[Deferred[Any]] = []
        self.cancelled = 0

    def _wait(self) -> Deferred[Any]:
        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1

        d: Deferred[Any] = Deferred(cancel)
        self.waiting.append(d)
        return d

    async def stat_blobs(self, repo: str, digests: list[Digest]) -> dict[Digest, int | None]:
        self.calls.append(("stat_blobs", tuple(digests)))
        await self._wait()
        return dict.fromkeys(digests, 1)

    async def get_manifest(self, repo: str, digest: Digest) -> ManifestRecord | None:
        self.calls.append(("get_manifest", (repo, digest)))
        await self._wait()
        return ManifestRecord(digest, OCI_MANIFEST, 1)


def lookups(source: MemorySource) -> list[tuple[str, Any]]:
    return [c for c in source.calls if c[0] in ("stat_blobs", "stat_blob", "get_manifest")]


def no_failures(events: list[dict[str, Any]]) -> None:
    assert [
        e
        for e in events
        if e.get("log_failure") is not None
        or (e.get("log_level") is not None and e["log_level"].name in ("error", "critical"))
    ] == []


def test_too_many_references_is_manifest_invalid_before_any_lookup(make_registry: Any) -> None:
    reg: Registry = make_registry(references=ReferencePolicy(max_references=1000))
    with capturedLogs() as events:
        r = reg.put_manifest("a", "t", image(fake(10_000)), OCI_MANIFEST)
    assert (r.code, r.error_code) == (400, "MANIFEST_INVALID")
    error = r.json()["errors"][0]
    assert error["message"] == (
        "manifest has 10001 references (blobs and manifests); this registry accepts at most 1000"
    )
    assert error["detail"] == {"references": 10001, "limit": 1000}
    assert lookups(reg.source) == []
    no_failures(events)


def test_the_limit_counts_an_index_s_children_too(make_registry: Any) -> None:
    reg: Registry = make_registry(references=ReferencePolicy(max_references=3))
    r = reg.put_manifest("a", "t", index(fake(4, "child")), OCI_INDEX)
    assert (r.code, r.error_code) == (400, "MANIFEST_INVALID")
    assert "4 references" in r.json()["errors"][0]["message"]
    r = reg.put_manifest("a", "t", image(fake(2)), OCI_MANIFEST)  # config + 2 layers = 3: at the limit
    assert r.error_code == "MANIFEST_BLOB_UNKNOWN"  # looked up (and missing), not refused for its size


def test_ten_thousand_present_blobs_go_in_batches(tmp_path: Path, clock: task.Clock) -> None:
    reg = Registry(tmp_path, clock, references=ReferencePolicy(max_references=10_001, batch=100))
    reg.source.__class__ = Everything
    r = reg.put_manifest("a", "t", image(fake(10_000)), OCI_MANIFEST)
    assert r.code == 201, r.body
    batches = [c[1] for c in lookups(reg.source)]
    assert len(batches) == 101  # 10,001 digests, 100 a question
    assert max(len(b) for b in batches) == 100
    assert sum(len(b) for b in batches) == 10_001


def test_the_first_batch_with_a_missing_blob_ends_the_check(make_registry: Any) -> None:
    reg: Registry = make_registry(references=ReferencePolicy(max_references=10_001, batch=100))
    r = reg.put_manifest("a", "t", image(fake(10_000)), OCI_MANIFEST)
    assert (r.code, r.error_code) == (400, "MANIFEST_BLOB_UNKNOWN")
    assert len(lookups(reg.source)) == 1
    error = r.json()["errors"][0]
    assert len(error["detail"]["missing"]) == 100
    assert error["message"].startswith("manifest references at least 100 unknown blob(s) or manifest(s): ")
    assert error["message"].endswith(", ...")  # names 10 of them


def test_child_manifests_are_looked_up_a_bounded_number_at_a_time(tmp_path: Path, clock: task.Clock) -> None:
    source = Hanging(str(tmp_path / "blobs"))
    reg = Registry(tmp_path, clock, source=source, references=ReferencePolicy(batch=50, concurrency=4))
    d = reg.stub.request("PUT", "http://registry.test/v2/a/manifests/t", data=json.dumps(index(fake(60, "c"))).encode(),
                         headers={"Content-Type": OCI_INDEX})  # fmt: skip
    most = 0
    for _ in range(200):
        reg.stub.flush()
        clock.advance(0)
        pending = [w for w in source.waiting if not w.called]
        most = max(most, len(pending))
        if pending:
            pending[0].callback(None)
    assert most == 4
    assert len(lookups(source)) == 60
    resp = reg.wait(d)
    assert resp.code == 201


def test_a_client_going_away_stops_the_check(tmp_path: Path, clock: task.Clock) -> None:
    source = Hanging(str(tmp_path / "blobs"))
    reg = Registry(tmp_path, clock, source=source, references=ReferencePolicy(max_references=10_001, batch=100))
    body = json.dumps(image(fake(10_000))).encode()
    site = Site(reg.api.resource(), timeout=None, reactor=clock)
    proto = site.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    with capturedLogs() as events:
        proto.dataReceived(
            b"PUT /v2/a/manifests/t HTTP/1.1\r\nHost: registry.test\r\nContent-Type: %s\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (OCI_MANIFEST.encode(), len(body), body)
        )
        clock.advance(0)
        assert len(lookups(source)) == 1
        proto.connectionLost(Failure(ConnectionLost()))
        clock.advance(3600)
    assert source.cancelled == 1
    assert len(lookups(source)) == 1  # nothing asked after the client left
    assert any(
        e.get("log_format", "").startswith("manifest {digest} for {repo}: reference check stopped") for e in events
    )
    no_failures(events)
    assert b"HTTP/1.1" not in transport.value()  # nothing was answered to nobody
