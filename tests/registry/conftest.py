"""Fixtures for the registry API tests: a ``RegistryAPI`` over the in-memory
source (``memory.MemorySource``) and an ``UploadArea`` with an ``InlineWorker``, driven through
``StubTreq`` with a ``task.Clock`` (no sockets, no sleeping)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import attrs
import pytest
from treq.testing import StubTreq
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from kraken.core import Digest
from kraken.registry.http import RegistryAPI
from kraken.registry.manifests import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP
from kraken.store import UploadArea
from kraken.workers import InlineWorker

from .memory import MemorySource

BASE = "http://registry.test"


@attrs.frozen
class Resp:
    code: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return None if not values else values[0].decode("latin-1") if isinstance(values[0], bytes) else values[0]

    def all(self, name: str) -> list[str]:
        return [v.decode("latin-1") if isinstance(v, bytes) else v for v in self.headers.getRawHeaders(name) or []]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        doc = self.json()
        assert len(doc["errors"]) == 1, doc
        return doc["errors"][0]["code"]


class Registry:
    """A registry under test plus the helpers the tests share."""

    def __init__(
        self,
        tmp_path: Path,
        clock: task.Clock,
        *,
        with_uploads: bool = True,
        source: MemorySource | None = None,
        **kwargs: Any,
    ) -> None:
        self.clock = clock
        self.source = source or MemorySource(str(tmp_path / "blobs"))
        self.uploads = UploadArea(str(tmp_path / "uploads"), InlineWorker()) if with_uploads else None
        self.api = RegistryAPI(self.source, self.uploads, clock=clock, **kwargs)
        self.stub = StubTreq(self.api.resource())

    def wait(self, d: Deferred[Any]) -> Any:
        out: list[Any] = []
        d.addBoth(out.append)
        for _ in range(1000):
            if out:
                break
            self.stub.flush()
            self.clock.advance(0)
        assert out, "no result"
        if isinstance(out[0], Failure):
            out[0].raiseException()
        return out[0]

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Resp:
        resp = self.wait(self.stub.request(method, BASE + path, data=body, headers=headers or {}))
        content = self.wait(self.stub.content(resp))
        return Resp(resp.code, resp.headers, content)

    def raw(self, data: bytes) -> bytes:
        """Send ``data`` over a real ``HTTPChannel`` and return the bytes on the wire."""
        site = Site(self.api.resource(), timeout=None, reactor=self.clock)
        proto = site.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(data)
        for _ in range(100):
            self.clock.advance(0)
        proto.connectionLost(Failure(ConnectionDone()))
        return transport.value()

    def get(self, path: str, **kw: Any) -> Resp:
        return self.request("GET", path, **kw)

    def head(self, path: str, **kw: Any) -> Resp:
        return self.request("HEAD", path, **kw)

    # -- content helpers ----------------------------------------------------

    def push_blob(self, repo: str, data: bytes) -> Digest:
        digest = Digest.from_bytes(data)
        r = self.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/?digest={digest}",
            body=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.code == 201, (r.code, r.body)
        return digest

    def start_upload(self, repo: str) -> str:
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        assert r.code == 202, (r.code, r.body)
        location = r.header("Location")
        assert location is not None
        return location

    def put_manifest(
        self, repo: str, reference: str, body: bytes | dict[str, Any], content_type: str | None = None
    ) -> Resp:
        if isinstance(body, dict):
            body = json.dumps(body, indent=2).encode()
        headers = {} if content_type is None else {"Content-Type": content_type}
        return self.request("PUT", f"/v2/{repo}/manifests/{reference}", body=body, headers=headers)

    def image(
        self, repo: str, *, media_type: str = DOCKER_MANIFEST, layers: int = 2, seed: str = "x"
    ) -> dict[str, Any]:
        """Push a config and layers into ``repo``; return a manifest (not pushed) over them."""
        oci = "oci" in media_type
        config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
        blobs = [self.push_blob(repo, config)]
        layer_data = [hashlib.sha256(f"{seed}-{i}".encode()).digest() * 100 for i in range(layers)]
        blobs += [self.push_blob(repo, d) for d in layer_data]
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": OCI_CONFIG if oci else DOCKER_CONFIG, "digest": str(blobs[0]), "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER_GZIP if oci else DOCKER_LAYER, "digest": str(d), "size": len(data)}
                for d, data in zip(blobs[1:], layer_data, strict=True)
            ],
        }
        return doc


def parse_wire(wire: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-cased names) and body of one raw HTTP response."""
    head, _, body = wire.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers, body


def chunked_request(method: str, path: str, data: bytes, headers: dict[str, str] | None = None) -> bytes:
    """A raw HTTP/1.1 request whose body is sent with chunked encoding (no Content-Length)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: registry.test", "Transfer-Encoding: chunked"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head + b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n"


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2).encode()


def digest_of(doc: dict[str, Any] | bytes) -> Digest:
    return Digest.from_bytes(doc if isinstance(doc, bytes) else encode(doc))


@pytest.fixture
def clock() -> task.Clock:
    return task.Clock()


@pytest.fixture(autouse=True)
def _cooperator(monkeypatch: pytest.MonkeyPatch, clock: task.Clock) -> None:
    # static.File streams through the global cooperator; run it on the test clock.
    monkeypatch.setattr(task, "_theCooperator", task.Cooperator(scheduler=lambda f: clock.callLater(0, f)))


@pytest.fixture
def registry(tmp_path: Path, clock: task.Clock) -> Registry:
    return Registry(tmp_path, clock)


@pytest.fixture
def make_registry(tmp_path: Path, clock: task.Clock) -> Any:
    count = [0]

    def make(**kwargs: Any) -> Registry:
        count[0] += 1
        return Registry(tmp_path / f"r{count[0]}", clock, **kwargs)

    return make
