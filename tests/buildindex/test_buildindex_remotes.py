"""Replication to remote clusters without processes: which tags are queued (matching rules, never a
replicated tag or a duplicate), the closure read from the origin, the order of the writes to a remote,
retries until it answers, the latest value winning, and config errors naming file and key."""

from __future__ import annotations

import json
from typing import Any

import pytest
from buildindex_fakes import App, FakeOrigin, InlineReactor, image_manifest, index_manifest, open_store, result_of
from twisted.python import usage
from writeback_harness import inline_clock  # noqa: F401  (the reactor fixture)

from kraken.buildindex import tap
from kraken.buildindex.config import RemoteConfig
from kraken.buildindex.index import TagIndex
from kraken.buildindex.outbox import NODE, REMOTE, Copy
from kraken.buildindex.remotes import Remote, ReplicationError, Replicator, read_closure
from kraken.buildindex.tags import TagStore
from kraken.core import Digest
from kraken.registry.manifests import OCI_MANIFEST
from kraken.registry.source import ManifestRecord

REPO = "team/app"


class FakeBuildIndex:
    """A remote build-index: what it was given, in order; ``error`` makes every call fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.error: Exception | None = None

    async def put_manifest(self, repo: str, record: ManifestRecord) -> None:
        if self.error is not None:
            raise self.error
        self.calls.append(("record", repo, str(record.digest)))

    async def replicate_tag(self, repo: str, tag: str, digest: Digest, *, source: str) -> None:
        if self.error is not None:
            raise self.error
        self.calls.append(("tag", repo, tag, str(digest), source))


class Nodes:
    """A duplicator stand-in with one neighbour."""

    def copies(self) -> list[Copy]:
        return [Copy(NODE, "http://bi-2:15004", 60.0)]

    def kick(self) -> None:
        pass


@pytest.fixture
def tags(tmp_path: Any, reactor: InlineReactor) -> Any:
    store = open_store(str(tmp_path / "tags.db"), reactor)
    yield store
    store.stopService()


@pytest.fixture
def here() -> FakeOrigin:
    return FakeOrigin()


class World:
    """This cluster (origin, tag store, index, replicator) and one remote ``dc2`` for ``team/.*``."""

    def __init__(self, tags: TagStore, here: FakeOrigin, reactor: InlineReactor, tmp_path: Any) -> None:
        self.tags, self.here, self.reactor = tags, here, reactor
        self.there = FakeOrigin()
        self.remote_index = FakeBuildIndex()
        config = RemoteConfig(name="dc2", repositories="team/.*", build_index="http://bi.dc2:1", origins="http://o:1")
        fake: Any = self.there
        remote = Remote(config, [self.remote_index], fake)  # type: ignore[list-item]
        origin: Any = here
        self.replicator = Replicator(
            [remote], tags.outbox(REMOTE), tags, origin, source="dc1", clock=reactor,
            max_manifest_size=1 << 20, backoff_min=1.0, backoff_max=4.0,
        )  # fmt: skip
        nodes: Any = Nodes()
        self.index = TagIndex(
            tags, origin, max_manifest_size=1 << 20, max_page=100, duplicator=nodes, replicator=self.replicator
        )

    def image(self, seed: str, *, there: bool = True) -> Digest:
        """An image on this cluster's origin (and, with ``there``, all its blobs on the remote's too)."""
        config, layer = f"config {seed}".encode(), f"layer {seed}".encode()
        manifest = image_manifest(config, [layer])
        for origin in (self.here, self.there) if there else (self.here,):
            for body in (config, layer, manifest):
                origin.add(body)
        return Digest.from_bytes(manifest)

    def queued(self, kind: str = REMOTE) -> list[tuple[str, str, str, Digest]]:
        return [(t.dest, t.repo, t.tag, t.digest) for t in result_of(self.tags.outbox(kind).pending())]


@pytest.fixture
def world(tags: TagStore, here: FakeOrigin, reactor: InlineReactor, tmp_path: Any) -> World:
    return World(tags, here, reactor, tmp_path)


def test_only_a_clients_tag_of_a_matching_repository_is_queued_for_the_remote(world: World) -> None:
    d = world.image("a")
    result_of(world.index.put_tag(REPO, "v1", d))
    result_of(world.index.put_tag("other/app", "v1", d))
    assert world.queued() == [("dc2", REPO, "v1", d)]
    # a tag received from a remote, or from a node, is never queued to a remote: no loops
    result_of(world.index.replicate(REPO, "v2", d, "dc3"))
    result_of(world.index.duplicate(REPO, "v3", d, 0.0))
    assert world.queued() == [("dc2", REPO, "v1", d)]
    # the replicated tag is marked with its source and still copied to this cluster's other nodes
    outbox = world.tags.outbox(REMOTE)
    assert result_of(outbox.source_of(REPO, "v2")) == "dc3"
    assert {q[2] for q in world.queued(NODE)} == {"v1", "v2"}
    # a client's put of the same tag clears the mark
    result_of(world.index.put_tag(REPO, "v2", d))
    assert result_of(outbox.source_of(REPO, "v2")) is None


def test_the_remote_gets_records_then_the_tag_and_the_queue_empties(world: World) -> None:
    d = world.image("a")
    record = ManifestRecord(d, OCI_MANIFEST, len(world.here.blobs[d]))
    result_of(world.tags.put_manifest(REPO, record))
    result_of(world.index.put_tag(REPO, "v1", d))
    world.replicator.startService()
    try:
        assert result_of(world.replicator.when_idle()) is None
        assert world.remote_index.calls == [("record", REPO, str(d)), ("tag", REPO, "v1", str(d), "dc1")]
        assert world.queued() == []
        stats = world.replicator.stats
        assert (stats.replicated, stats.blobs_sent, stats.blobs_present) == (1, 0, 3)
    finally:
        world.replicator.stopService()


def test_an_outage_is_retried_and_the_latest_value_wins(world: World) -> None:
    first, latest = world.image("a"), world.image("b")
    world.remote_index.error = ConnectionRefusedError("dc2 is down")
    world.replicator.startService()
    try:
        result_of(world.index.put_tag(REPO, "v1", first))
        [task] = result_of(world.replicator.pending())
        assert task.attempts == 1 and "dc2 is down" in (task.last_error or "")
        result_of(world.index.put_tag(REPO, "v1", latest))  # moved while queued: one row, the latest digest
        [task] = result_of(world.replicator.pending())
        assert task.digest == latest and task.attempts == 1  # tried at once again, still down: 1 s backoff
        world.remote_index.error = None
        world.reactor.advance(1.0)
        assert result_of(world.replicator.when_idle()) is None
        assert world.remote_index.calls == [("tag", REPO, "v1", str(latest), "dc1")]
    finally:
        world.replicator.stopService()


def test_a_remote_no_longer_configured_is_dropped(world: World) -> None:
    d = world.image("a")
    result_of(world.tags.put_tag(REPO, "v1", d, copies=[Copy(REMOTE, "gone")]))
    world.replicator.startService()
    try:
        assert world.queued() == [] and world.replicator.stats.dropped == 1
    finally:
        world.replicator.stopService()


def test_the_closure_has_children_blobs_and_referrers(world: World, here: FakeOrigin) -> None:
    config, layer = b"config", b"layer"
    child = image_manifest(config, [layer], oci=True)
    index = index_manifest([child])
    signature = image_manifest(b"sig config", [b"sig"], oci=True, subject=child)
    for body in (config, layer, child, index, signature, b"sig config", b"sig"):
        here.add(body)
    sig = Digest.from_bytes(signature)
    result_of(
        world.tags.put_manifest(
            REPO, ManifestRecord(sig, OCI_MANIFEST, len(signature), subject=Digest.from_bytes(child))
        )
    )
    origin: Any = here
    closure = result_of(read_closure(origin, world.tags, REPO, Digest.from_bytes(index), max_manifest_size=1 << 20))
    assert closure.manifests == [Digest.from_bytes(b) for b in (index, child, signature)]
    assert set(closure.blobs) == {Digest.from_bytes(b) for b in (config, layer, b"sig config", b"sig")}
    here.blobs[Digest.from_bytes(child)] = b"{}"  # garbage where the child should be
    with pytest.raises(ReplicationError):
        result_of(read_closure(origin, world.tags, REPO, Digest.from_bytes(index), max_manifest_size=1 << 20))


REMOTE_OK = "{name: dc2, repositories: 'team/.*', build_index: 'http://bi:1', origins: 'http://o:1'}"


@pytest.mark.parametrize(
    "text, key, message",
    [
        ("remotes: [{name: dc2, repositories: '(', build_index: 'http://b:1', origins: 'http://o:1'}]\n",
         "remotes.0", "not a valid regular expression"),
        (f"remotes: [{REMOTE_OK}, {REMOTE_OK}]\n", "remotes.1.name", "named twice"),
        ("remotes: [{name: dc2, repositories: x, build_index: 'b:1', origins: 'http://o:1'}]\n",
         "remotes.0", "build_index"),
        ("remotes: [{name: dc2, repositories: x, build_index: 'http://b:1'}]\n", "remotes.0", "origins"),
        ("remotes: [{name: 'a b', repositories: x, build_index: 'http://b:1', origins: 'http://o:1'}]\n",
         "remotes.0", "not a remote name"),
        ("replication: {backoff_min: 10s, backoff_max: 1s}\n", "replication", "backoff_max"),
        (f"remotes: [{REMOTE_OK[:-1]}, rate: 0}}]\n", "remotes.0", "rate must be positive"),
        (f"remotes: [{REMOTE_OK[:-1]}, rate: fast}}]\n", "remotes.0.rate", ""),
    ],
)  # fmt: skip
def test_bad_remotes_name_file_and_key(tmp_path: Any, text: str, key: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(usage.UsageError) as info:
        tap.Options().parseOptions(["--config", str(path)])
    assert f"{path}: {key}" in str(info.value)
    assert message in str(info.value)


def test_remote_rules_parse(tmp_path: Any) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(f"remotes: [{REMOTE_OK}]\nreplication: {{concurrency: 2}}\n")
    options = tap.Options()
    options.parseOptions(["--config", str(path)])
    [remote] = options["parsed"].remotes
    assert remote.matches("team/app") and not remote.matches("xteam/app")
    assert remote.build_indexes == ("http://bi:1",) and options["parsed"].replication.concurrency == 2
    assert json.dumps(remote.name) == '"dc2"'


# -- the HTTP routes ------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Any) -> Any:
    a = App(str(tmp_path / "app.db"))
    yield a
    a.close()


def test_the_remote_route_stores_a_checked_marked_tag(app: App) -> None:
    config, layer = b"config", b"layer"
    app.origin.add(config)
    app.origin.add(layer)
    d = app.origin.add(image_manifest(config, [layer]))
    body = json.dumps({"digest": str(d), "source": "dc1"}).encode()
    assert app.request("PUT", f"/internal/remote/repositories/{REPO}/tags/v1", data=body) == (201, str(d).encode())
    assert result_of(app.tags.outbox(REMOTE).source_of(REPO, "v1")) == "dc1"
    missing = json.dumps({"digest": str(Digest.from_bytes(b"nothing")), "source": "dc1"}).encode()
    assert app.request("PUT", f"/internal/remote/repositories/{REPO}/tags/v2", data=missing)[0] == 400


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"source": "dc1"}', b'{"digest": "sha256:00", "source": "dc1"}',
     json.dumps({"digest": str(Digest.from_bytes(b"x"))}).encode(),
     json.dumps({"digest": str(Digest.from_bytes(b"x")), "source": "\n"}).encode()],
)  # fmt: skip
def test_bad_replicated_tags_are_refused(app: App, body: bytes) -> None:
    status, answer = app.request("PUT", f"/internal/remote/repositories/{REPO}/tags/v1", data=body)
    assert status == 400 and b"error" in answer


def test_the_listing_without_remotes_is_empty(app: App) -> None:
    assert app.json("GET", "/internal/replication") == (200, {"remotes": [], "pending": [], "stats": {}})
    assert app.json("POST", f"/internal/replication/repositories/{REPO}/tags/v1") == (200, {"retriggered": 0})
    assert app.json("GET", "/stats") == (200, {"replication": {}})


def test_service_wiring_with_remotes(tmp_path: Any) -> None:
    from test_buildindex_tap import ThreadReactor, start_and_stop

    path = tmp_path / "bi.yaml"
    path.write_text(f"database: {tmp_path / 'state' / 'tags.db'}\nremotes: [{REMOTE_OK}]\n")
    options = tap.Options()
    options.parseOptions(["--config", str(path)])
    reactor = ThreadReactor()
    service = tap.makeService(options, reactor=reactor)
    names = [s.name for s in service]
    assert names[1:] == ["tags", "threads-io", "http-client", "http-client-remote-dc2", "replication", "http"]
    assert service.getServiceNamed("replication").remotes == ["dc2"]
    assert not (tmp_path / "state" / "remote-scratch").exists()  # blobs stream through, never to disk
    start_and_stop(service, reactor)


def test_missing_blobs_stream_to_the_remote_once(world: World) -> None:
    d = world.image("a", there=False)
    world.replicator.startService()
    try:
        result_of(world.index.put_tag(REPO, "v1", d))
        result_of(world.index.put_tag(REPO, "v2", d))  # the same image again: nothing to send
        assert result_of(world.replicator.when_idle()) is None
        assert sorted(world.there.uploads) == sorted(set(world.here.blobs))  # each once
        assert world.there.blobs == world.here.blobs
        mine = world.replicator.stats.remotes["dc2"]
        assert (mine.replicated, mine.blobs_sent, mine.blobs_present, mine.failures) == (2, 3, 3, 0)
        assert mine.bytes_sent == sum(len(b) for b in world.here.blobs.values())
    finally:
        world.replicator.stopService()


def test_a_blob_that_does_not_hash_to_its_digest_is_retried_and_never_stored(world: World) -> None:
    d = world.image("a", there=False)
    layer = Digest.from_bytes(b"layer a")
    world.here.blobs[layer] = b"garbage"  # this cluster's origin serves the wrong bytes
    world.replicator.startService()
    try:
        result_of(world.index.put_tag(REPO, "v1", d))
        assert layer not in world.there.blobs and world.remote_index.calls == []
        [task] = result_of(world.replicator.pending())
        assert task.attempts == 1 and "digest mismatch" in (task.last_error or "")
        world.reactor.advance(1.0)
        assert result_of(world.replicator.pending())[0].attempts == 2  # retried, refused again
        assert layer not in world.there.blobs and world.remote_index.calls == []
        world.here.blobs[layer] = b"layer a"
        world.reactor.advance(2.0)
        assert result_of(world.replicator.when_idle()) is None
        assert world.there.blobs[layer] == b"layer a" and world.remote_index.calls[-1][0] == "tag"
        assert world.replicator.stats.remotes["dc2"].failures == 2
    finally:
        world.replicator.stopService()


def test_depth_lag_and_failures_per_remote_in_the_listing_and_the_log(world: World) -> None:
    from twisted.logger import capturedLogs

    world.there.error = ConnectionRefusedError("dc2 is down")
    d = world.image("a", there=False)
    world.replicator.startService()
    try:
        result_of(world.index.put_tag(REPO, "v1", d))
        world.reactor.advance(30.0)
        report = result_of(world.replicator.report())
        assert report["dc2"]["pending"] == 1 and report["dc2"]["lag"] == 30.0
        assert report["dc2"]["failures"] == world.replicator.stats.failures >= 2
        with capturedLogs() as events:
            world.reactor.advance(30.0)  # the report interval (60 s) since the start
        lines = [e["log_format"].format(**e) for e in events if "pending" in e.get("log_format", "")]
        assert lines and lines[0].startswith("replication to dc2: 1 pending, the oldest for 60s")
    finally:
        world.replicator.stopService()


def test_a_remotes_rate_is_a_size_per_second(tmp_path: Any) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(f"remotes: [{REMOTE_OK[:-1]}, rate: 100MiB}}]\nreplication: {{report_interval: 5s}}\n")
    options = tap.Options()
    options.parseOptions(["--config", str(path)])
    assert options["parsed"].remotes[0].rate == 100 << 20
    assert options["parsed"].replication.report_interval == 5.0
