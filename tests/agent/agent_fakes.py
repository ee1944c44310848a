"""Test doubles for the agent tests: a fake scheduler (blobs in a directory,
failures on demand), a fake build-index and the StubTreq driver."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import attrs
import treq
from results import result_of
from treq.testing import StubTreq
from twisted.internet import task
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.web.http_headers import Headers

from kraken.core import Digest
from kraken.p2p.scheduler import BlobNotFound, DownloadFailed, Stats
from kraken.registry.manifests import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP

BASE = "http://agent.test"


class FakeScheduler:
    """What the agent needs of ``kraken.p2p.scheduler.Scheduler``: ``download``
    returns the path of a blob added with ``add``; unknown blobs raise
    ``BlobNotFound``; blobs in ``failing`` raise ``DownloadFailed``."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        cache.mkdir(parents=True, exist_ok=True)
        self.paths: dict[Digest, str] = {}
        self.failing: set[Digest] = set()
        # digest -> what download raises (the tracker failing while the metainfo is fetched, say)
        self.raising: dict[Digest, Exception] = {}
        self.downloads: list[tuple[str, Digest]] = []
        self.counters = Stats(bytes_in=10, pieces_in=2, downloads_completed=1)

    def add(self, data: bytes) -> Digest:
        digest = Digest.from_bytes(data)
        path = self.cache / digest.hex
        path.write_bytes(data)
        self.paths[digest] = str(path)
        return digest

    async def download(self, namespace: str, digest: Digest) -> str:
        self.downloads.append((namespace, digest))
        if digest in self.failing:
            raise DownloadFailed(f"no peer served {digest}")
        if digest in self.raising:
            raise self.raising[digest]
        path = self.paths.get(digest)
        if path is None:
            raise BlobNotFound(str(digest))
        return path

    def stats(self) -> Stats:
        return self.counters

    def factory(self) -> ServerFactory:
        return ServerFactory.forProtocol(Protocol)


class FakeTags:
    """What the agent needs of ``BuildIndexClient``: tags and a health flag."""

    def __init__(self) -> None:
        self.tags: dict[tuple[str, str], Digest] = {}
        self.calls: list[tuple[str, str]] = []

    async def get_tag(self, repo: str, tag: str) -> Digest | None:
        self.calls.append((repo, tag))
        return self.tags.get((repo, tag))


@attrs.frozen
class Resp:
    code: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        if not values:
            return None
        value = values[0]
        return value.decode("latin-1") if isinstance(value, bytes) else value

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        doc = self.json()
        assert len(doc["errors"]) == 1, doc
        code: str = doc["errors"][0]["code"]
        return code


class Client:
    """Requests to a Klein resource through StubTreq, driven by a ``task.Clock``."""

    def __init__(self, resource: Any, clock: task.Clock) -> None:
        self.stub = StubTreq(resource)
        self.clock = clock

    def pump(self) -> None:
        self.clock.advance(0)
        self.stub.flush()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Resp:
        async def go() -> Resp:
            response = await self.stub.request(method, BASE + path, data=body, headers=headers or {})
            return Resp(response.code, response.headers, await treq.content(response))

        result: Resp = result_of(go(), self.pump)
        return result

    def get(self, path: str, **kw: Any) -> Resp:
        return self.request("GET", path, **kw)

    def head(self, path: str, **kw: Any) -> Resp:
        return self.request("HEAD", path, **kw)


class TickingClient(Client):
    """Each pump moves the clock one second: a bounded wait ends."""

    def pump(self) -> None:
        self.clock.advance(1)
        self.stub.flush()


def layer(seed: str, size: int = 3000) -> bytes:
    return (hashlib.sha256(seed.encode()).digest() * (size // 32 + 1))[:size]


def image(scheduler: FakeScheduler, *, oci: bool = False, layers: int = 2, media_type_field: bool = True) -> bytes:
    """Add a config and layers to the scheduler; return a manifest over them (not added)."""
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    blobs = [config, *(layer(f"layer-{i}") for i in range(layers))]
    digests = [scheduler.add(b) for b in blobs]
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "config": {"mediaType": OCI_CONFIG if oci else DOCKER_CONFIG, "digest": str(digests[0]), "size": len(config)},
        "layers": [
            {"mediaType": OCI_LAYER_GZIP if oci else DOCKER_LAYER, "digest": str(d), "size": len(b)}
            for d, b in zip(digests[1:], blobs[1:], strict=True)
        ],
    }
    if media_type_field:
        doc["mediaType"] = "application/vnd.oci.image.manifest.v1+json" if oci else DOCKER_MANIFEST
    return json.dumps(doc, indent=2).encode()
