"""End to end in memory: BuildIndexClient -> BuildIndexHTTP -> ClusterClient ->
a real OriginHTTP over a CAStore, all through StubTreq on one fake clock."""

from __future__ import annotations

from typing import Any

import pytest
from buildindex_fakes import BASE, InlineReactor, image_manifest, index_manifest, open_store, result_of
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import task
from twisted.internet.task import Cooperator

from kraken.buildindex.client import BuildIndexClient, TagRefused
from kraken.buildindex.http import BuildIndexHTTP
from kraken.buildindex.index import TagIndex
from kraken.core import Digest, PieceLengthRule
from kraken.net import HTTPClientConfig
from kraken.origin.client import ClusterClient
from kraken.origin.http import OriginHTTP
from kraken.origin.node import OriginNode
from kraken.registry.source import Page
from kraken.store import CAStore
from kraken.workers import InlineWorker

CONFIG = HTTPClientConfig(retries=1, backoff=1.0, max_backoff=1.0)
REPO = "team/app"


class World:
    def __init__(self, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reactor = InlineReactor()
        # static.File streams through the global cooperator: run it on our clock.
        monkeypatch.setattr(task, "_theCooperator", Cooperator(scheduler=lambda f: self.reactor.callLater(0, f)))
        worker = InlineWorker()
        store = CAStore(
            str(tmp_path / "origin"), worker=worker, piece_rule=PieceLengthRule(((0, 1 << 20),)),
            now=self.reactor.seconds,
        )  # fmt: skip
        self.origin_stub = StubTreq(OriginHTTP(OriginNode(store, advertise="origin.test:15002")).resource())
        # OriginClient.upload sends an IBodyProducer, which StubTreq.request does not take.
        origin_http = HTTPClient(agent=self.origin_stub._agent)
        self.origin = ClusterClient(
            http=origin_http, origins=["http://origin.test:15002"], clock=self.reactor, config=CONFIG, worker=worker
        )
        self.tags = open_store(str(tmp_path / "tags.db"), self.reactor)
        app = BuildIndexHTTP(TagIndex(self.tags, self.origin, max_manifest_size=1 << 20, max_page=100))
        self.index_stub = StubTreq(app.resource())
        self.client = BuildIndexClient(http=self.index_stub, base=BASE, clock=self.reactor, config=CONFIG)
        self.tmp_path = tmp_path

    def run(self, work: Any) -> Any:
        def pump() -> None:
            self.reactor.advance(0.1)
            self.origin_stub.flush()
            self.index_stub.flush()

        return result_of(work, pump)

    def push(self, data: bytes) -> Digest:
        digest = Digest.from_bytes(data)
        path = self.tmp_path / f"upload-{digest.hex}"
        path.write_bytes(data)
        self.run(self.origin.upload(REPO, digest, str(path), len(data)))
        return digest


@pytest.fixture
def world(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    w = World(tmp_path, monkeypatch)
    yield w
    w.tags.stopService()


def test_tag_is_accepted_once_the_origin_has_everything(world: World) -> None:
    config, layer = b'{"architecture": "amd64"}', b"layer bytes " * 100
    manifest_body = image_manifest(config, [layer])
    manifest = world.push(manifest_body)
    with pytest.raises(TagRefused) as info:
        world.run(world.client.put_tag(REPO, "v1", manifest))
    assert sorted(info.value.missing) == sorted([Digest.from_bytes(config), Digest.from_bytes(layer)])

    world.push(config)
    with pytest.raises(TagRefused) as info:
        world.run(world.client.put_tag(REPO, "v1", manifest))
    assert info.value.missing == [Digest.from_bytes(layer)]

    world.push(layer)
    world.run(world.client.put_tag(REPO, "v1", manifest))
    assert world.run(world.client.get_tag(REPO, "v1")) == manifest
    assert world.run(world.client.list_tags(REPO, None, None)) == Page(("v1",), False)


def test_index_with_a_missing_child(world: World) -> None:
    config, layer = b"{}", b"layer"
    world.push(config)
    world.push(layer)
    present = image_manifest(config, [layer], oci=True)
    world.push(present)
    absent = image_manifest(config, [layer, layer], oci=True)
    index = world.push(index_manifest([present, absent]))
    with pytest.raises(TagRefused) as info:
        world.run(world.client.put_tag(REPO, "multi", index))
    assert info.value.missing == [Digest.from_bytes(absent)]
    world.push(absent)
    world.run(world.client.put_tag(REPO, "multi", index))
    assert world.run(world.client.get_tag(REPO, "multi")) == index
