"""BuildIndexes: two real BuildIndexHTTP apps behind StubTreq, one killed; reads and tag PUTs fail over."""

from __future__ import annotations

from typing import Any

import pytest
from buildindex_fakes import App, blob, image_manifest
from results import result_of
from routed_http import Routed

from kraken.buildindex.client import BuildIndexes, TagRefused
from kraken.cluster.ring import score
from kraken.cluster.services import ServiceHosts, ServiceHostsConfig
from kraken.core import Digest
from kraken.net import HTTPClientConfig, RetryPolicy
from kraken.registry.source import Page

CONFIG = HTTPClientConfig(retries=2, backoff=1.0, max_backoff=1.0, timeout=30.0)
URLS = ("http://bi-1.test:15004", "http://bi-2.test:15004")
REPO = "team/app"


class Fixture:
    def __init__(self, base: Any) -> None:
        self.apps = {url: App(str(base / f"tags-{i}.db")) for i, url in enumerate(URLS)}
        self.clock = self.apps[URLS[0]].reactor
        self.http = Routed({url: app.stub for url, app in self.apps.items()})
        hosts = ServiceHosts(
            ServiceHostsConfig(hosts=URLS),
            clock=self.clock,
            policy=RetryPolicy.from_config(CONFIG),
            kind="build-index",
        )
        self.nodes = BuildIndexes(hosts, http=self.http, clock=self.clock, config=CONFIG)  # type: ignore[arg-type]
        self.first, self.second = sorted(URLS, key=lambda m: (-score(REPO.encode(), m), m))

    def run(self, work: Any) -> Any:
        def pump() -> None:
            self.clock.advance(0.5)
            self.http.flush()

        return result_of(work, pump)

    def image(self, seed: str) -> Digest:
        config, layer = f"config {seed}".encode(), f"layer {seed}".encode()
        digest = Digest.from_bytes(b"")
        for app in self.apps.values():
            app.origin.add(config)
            app.origin.add(layer)
            digest = app.origin.add(image_manifest(config, [layer]))
        return digest

    def close(self) -> None:
        for app in self.apps.values():
            app.close()


@pytest.fixture
def fx(tmp_path: Any) -> Any:
    f = Fixture(tmp_path)
    yield f
    assert [c for c in f.clock.getDelayedCalls() if c.active()] == []
    f.close()


def test_a_repository_goes_to_its_first_node(fx: Fixture) -> None:
    manifest = fx.image("x")
    fx.run(fx.nodes.put_tag(REPO, "v1", manifest))
    assert fx.run(fx.nodes.get_tag(REPO, "v1")) == manifest
    assert fx.run(fx.nodes.list_tags(REPO, None, None)) == Page(("v1",), False)
    assert fx.http.asked == [fx.first] * 3
    assert fx.run(fx.apps[fx.second].index.get_tag(REPO, "v1")) is None


def test_reads_and_tag_puts_move_to_the_next_node_when_the_first_dies(fx: Fixture) -> None:
    manifest = fx.image("x")
    fx.run(fx.apps[fx.second].index.put_tag(REPO, "v1", manifest))  # as the first node's duplicate put would
    fx.http.dead.add(fx.first)
    assert fx.run(fx.nodes.get_tag(REPO, "v1")) == manifest
    assert fx.http.asked == [fx.first, fx.second]
    # A tag PUT is idempotent (the same digest leaves the same state): it fails over too.
    fx.http.asked.clear()
    fx.run(fx.nodes.put_tag(REPO, "v2", manifest))
    assert fx.http.asked == [fx.second]  # the first is down: tried after the others
    assert fx.run(fx.apps[fx.second].index.get_tag(REPO, "v2")) == manifest
    assert fx.run(fx.nodes.list_repositories(None, None)) == Page((REPO,), False)


def test_a_refused_tag_is_an_answer_not_a_failure(fx: Fixture) -> None:
    _config, config_body = blob("c")
    layer, layer_body = blob("l")
    for app in fx.apps.values():
        app.origin.add(config_body)
        manifest = app.origin.add(image_manifest(config_body, [layer_body]))
    with pytest.raises(TagRefused) as info:
        fx.run(fx.nodes.put_tag(REPO, "v1", manifest))
    assert info.value.missing == [layer]
    assert fx.http.asked == [fx.first]
    assert not fx.nodes.hosts.health.is_down(fx.first)


def test_health_is_any_node(fx: Fixture) -> None:
    assert fx.run(fx.nodes.health()) is True
    fx.http.dead.update(URLS)
    assert fx.run(fx.nodes.health()) is False
