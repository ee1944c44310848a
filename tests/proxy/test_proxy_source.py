"""The proxy's source when the client goes away: a manifest's reference
check and a blob relay stop, ask the origin nothing more, and log no error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from http_fakes import Hanging
from twisted.internet import task
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.web.server import Site

from kraken.buildindex.client import BuildIndexClient
from kraken.core import Digest
from kraken.net import HTTPClientConfig
from kraken.origin.client import ClusterClient
from kraken.proxy.source import ProxySource, RelayedBlob
from kraken.registry.http import RegistryAPI
from kraken.registry.manifests import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST
from kraken.registry.references import ReferencePolicy
from kraken.store import UploadArea
from kraken.workers import InlineWorker

CONFIG = HTTPClientConfig(retries=3, backoff=1.0, max_backoff=1.0)
ORIGINS = ["http://o1.test:15002", "http://o2.test:15002", "http://o3.test:15002"]


def connect(resource: Any, clock: task.Clock) -> tuple[Any, StringTransport]:
    site = Site(resource, timeout=None, reactor=clock)
    proto = site.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def bad_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e.get("log_failure") is not None or (e.get("log_level") is not None and e["log_level"].name != "info"
                                                 and e["log_level"].name != "debug")
    ]  # fmt: skip


def proxy(tmp_path: Path, clock: task.Clock, http: Hanging) -> RegistryAPI:
    worker = InlineWorker()
    origin = ClusterClient(http=http, origins=ORIGINS, clock=clock, config=CONFIG, worker=worker)  # type: ignore[arg-type]
    index = BuildIndexClient(http=http, base="http://index.test", clock=clock, config=CONFIG)  # type: ignore[arg-type]
    source = ProxySource(origin, index, worker=worker, scratch=str(tmp_path))
    uploads = UploadArea(str(tmp_path / "uploads"), worker)
    return RegistryAPI(source, uploads, clock=clock, references=ReferencePolicy(max_references=1000))


def test_a_manifest_check_stops_when_the_client_goes_away(tmp_path: Path) -> None:
    clock = task.Clock()
    http = Hanging()
    api = proxy(tmp_path, clock, http)
    layers = [Digest(hashlib.sha256(b"%d" % i).hexdigest()) for i in range(999)]
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": str(Digest.from_bytes(b"c")), "size": 1},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": str(d), "size": 1} for d in layers],
    }
    body = json.dumps(doc).encode()
    proto, transport = connect(api.resource(), clock)
    with capturedLogs() as events:
        proto.dataReceived(
            b"PUT /v2/a/manifests/t HTTP/1.1\r\nHost: r\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        clock.advance(0)
        # 1,000 references: one batch question to one origin, not 1,000 lookups
        assert [(m, u.split("/", 3)[-1]) for m, u in http.sent] == [("POST", "blobs/stat")]
        proto.connectionLost(Failure(ConnectionLost()))
        clock.advance(3600)
    assert len(http.sent) == 1 and http.pending == []  # cancelled, and neither retried nor failed over
    assert clock.getDelayedCalls() == []
    assert bad_events(events) == []
    assert transport.value() == b""


def test_a_blob_relay_stops_when_the_client_goes_away(tmp_path: Path) -> None:
    clock = task.Clock()
    http = Hanging()
    origin = ClusterClient(http=http, origins=ORIGINS, clock=clock, config=CONFIG, worker=InlineWorker())  # type: ignore[arg-type]
    digest = Digest.from_bytes(b"blob")
    proto, transport = connect(RelayedBlob(origin, "a", digest, 4), clock)
    with capturedLogs() as events:
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: r\r\n\r\n")
        clock.advance(0)
        assert len(http.sent) == 1  # where the blob lives
        proto.connectionLost(Failure(ConnectionLost()))
        clock.advance(3600)
    # Before: the cancel came back as ResponseNeverReceived, the client asked
    # the next origins, and finally finished the lost request: "Request.finish
    # called on a request after its connection was lost" as an unhandled error.
    assert len(http.sent) == 1 and http.pending == []
    assert clock.getDelayedCalls() == []
    assert bad_events(events) == []
    assert transport.value() == b""
