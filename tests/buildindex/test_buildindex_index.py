"""TagIndex without HTTP: which tags it accepts (and what it says is missing), duplicates, reads through the tag
archive, listings and manifest records, over a synchronous TagStore and a fake origin."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from buildindex_fakes import (
    FakeOrigin,
    FakeRegistryBackend,
    InlineReactor,
    blob,
    image_manifest,
    index_manifest,
    open_store,
    result_of,
    tag_archive,
)
from twisted.logger import capturedLogs

from kraken.backends import BackendUnavailable
from kraken.buildindex.index import CHECK_BATCH, InvalidRecord, OriginCorrupt, OriginUnavailable, Rejected, TagIndex
from kraken.buildindex.outbox import NODE, Copy
from kraken.buildindex.tags import TagStore
from kraken.core import Digest
from kraken.registry.source import ManifestRecord, Page

REPO = "team/app"


class Duplicates:
    """A duplicator with one neighbour, whose queued copies ``sent`` reads from the outbox."""

    def __init__(self) -> None:
        self.kicks = 0

    def copies(self) -> list[Copy]:
        return [Copy(NODE, "http://other:15004", 30.0)]

    def kick(self) -> None:
        self.kicks += 1


@pytest.fixture
def tags(tmp_path: Any) -> Iterator[TagStore]:
    store = open_store(str(tmp_path / "tags.db"), InlineReactor(), max_page=3)
    yield store
    store.stopService()


origin = pytest.fixture(lambda: FakeOrigin(), name="origin")
duplicates = pytest.fixture(lambda: Duplicates(), name="duplicates")


def make_index(tags: TagStore, origin: FakeOrigin, **kw: Any) -> TagIndex:
    fake: Any = origin
    return TagIndex(tags, fake, max_manifest_size=1 << 20, max_page=3, **kw)


@pytest.fixture
def index(tags: TagStore, origin: FakeOrigin, duplicates: Duplicates) -> TagIndex:
    return make_index(tags, origin, duplicator=duplicates)


def image(origin: FakeOrigin, seed: str, layers: int = 2, *, missing: int = 0) -> tuple[Digest, list[Digest]]:
    """A manifest on the origin with its config and layers, the last ``missing`` of them left out."""
    bodies = [f"config {seed}".encode(), *(f"layer {seed} {i}".encode() for i in range(layers))]
    refs = [Digest.from_bytes(b) for b in bodies]
    for body in bodies[: len(bodies) - missing]:
        origin.add(body)
    return origin.add(image_manifest(bodies[0], bodies[1:])), refs


def queued(tags: TagStore) -> list[tuple[str, str, Digest]]:
    return [(t.repo, t.tag, t.digest) for t in result_of(tags.outbox(NODE).pending())]


def test_a_tag_whose_references_are_all_there_is_accepted_and_duplicated(
    index: TagIndex, origin: FakeOrigin, duplicates: Duplicates, tags: TagStore
) -> None:
    first, _ = image(origin, "1")
    second, _ = image(origin, "2")
    assert result_of(index.put_tag(REPO, "v1", first)) is None
    assert result_of(index.put_tag(REPO, "v1", second)) == first
    assert result_of(index.get_tag(REPO, "v1")) == second
    # one copy queued per neighbour, holding the latest digest; the loop was woken each time
    assert queued(tags) == [(REPO, "v1", second)] and duplicates.kicks == 2


def test_a_tag_is_rejected_with_its_missing_references(
    index: TagIndex, origin: FakeOrigin, duplicates: Duplicates, tags: TagStore
) -> None:
    manifest, refs = image(origin, "x", missing=2)
    with capturedLogs() as events, pytest.raises(Rejected) as info:
        result_of(index.put_tag(REPO, "v1", manifest))
    assert info.value.message == f"cannot tag {REPO}:v1: references missing on the origin"
    assert info.value.missing == sorted(refs[-2:])
    [refused] = [e for e in events if "refused" in e["log_format"]]
    assert refused["count"] == 2
    assert result_of(index.get_tag(REPO, "v1")) is None and queued(tags) == [] and duplicates.kicks == 0


def test_a_missing_manifest_is_named(index: TagIndex) -> None:
    nowhere = Digest.from_bytes(b"nowhere")
    with pytest.raises(Rejected) as info:
        result_of(index.put_tag(REPO, "v1", nowhere))
    assert (info.value.message, info.value.missing) == (
        f"cannot tag {REPO}:v1: manifest missing on the origin",
        [nowhere],
    )


def test_an_index_checks_its_children_and_their_blobs(index: TagIndex, origin: FakeOrigin) -> None:
    child, _ = image(origin, "child", missing=1)
    parent = origin.add(index_manifest([origin.blobs[child]]))
    with pytest.raises(Rejected) as info:
        result_of(index.put_tag(REPO, "multi", parent))
    assert len(info.value.missing) == 1


def test_too_many_references_are_rejected_before_any_lookup(tags: TagStore, origin: FakeOrigin) -> None:
    manifest, _ = image(origin, "big", layers=5)
    with pytest.raises(Rejected, match="has 6 references"):
        result_of(make_index(tags, origin, max_references=5).put_tag(REPO, "v1", manifest))
    assert origin.batches == []


def test_blobs_are_asked_about_in_batches(index: TagIndex, origin: FakeOrigin) -> None:
    manifest, refs = image(origin, "wide", layers=CHECK_BATCH + 10)
    result_of(index.put_tag(REPO, "v1", manifest))
    assert [len(b) for b in origin.batches] == [CHECK_BATCH, len(refs) - CHECK_BATCH]


def test_origin_failures_and_lies(index: TagIndex, origin: FakeOrigin) -> None:
    manifest, _ = image(origin, "x")
    origin.error = ConnectionRefusedError("down")
    with pytest.raises(OriginUnavailable, match=r"origin unavailable \(read manifest"):
        result_of(index.put_tag(REPO, "v1", manifest))
    origin.error = None
    liar = Digest.from_bytes(b"the digest asked for")
    origin.blobs[liar] = origin.blobs[manifest]
    with pytest.raises(OriginCorrupt, match=f"the origin's content for {liar} has digest {manifest}"):
        result_of(index.put_tag(REPO, "v1", liar))


def test_a_duplicate_is_checked_like_a_tag_put_and_not_sent_on(
    index: TagIndex, origin: FakeOrigin, duplicates: Duplicates, tags: TagStore
) -> None:
    manifest, _ = image(origin, "dup")
    assert result_of(index.duplicate(REPO, "v1", manifest, 30.0)) is None
    assert result_of(index.get_tag(REPO, "v1")) == manifest
    assert queued(tags) == []


def test_a_duplicate_cannot_repoint_a_tag_to_anything_put_tag_refuses(index: TagIndex, origin: FakeOrigin) -> None:
    good, _ = image(origin, "good")
    result_of(index.put_tag(REPO, "v1", good))
    unknown = Digest.from_bytes(b"not on the origin")
    incomplete, refs = image(origin, "incomplete", missing=1)
    not_a_manifest = origin.add(b"just a layer")
    for digest, missing in ((unknown, [unknown]), (incomplete, [refs[-1]]), (not_a_manifest, None)):
        with pytest.raises(Rejected) as e:
            result_of(index.duplicate(REPO, "v1", digest, 0))
        if missing is not None:
            assert e.value.missing == missing
    assert result_of(index.get_tag(REPO, "v1")) == good


def test_a_miss_asks_the_archive_and_a_failure_there_is_a_miss(
    tmp_path: Any, tags: TagStore, origin: FakeOrigin
) -> None:
    upstream = FakeRegistryBackend()
    d = Digest.from_bytes(b"upstream's")
    upstream.tags[("library/ubuntu", "22.04")] = d
    index = make_index(tags, origin, archive=tag_archive(str(tmp_path), ("library/.*", "registry", upstream)))
    assert result_of(index.get_tag("library/ubuntu", "22.04")) == d
    assert result_of(index.get_tag("team/app", "v1")) is None  # no archive entry for it
    upstream.error = BackendUnavailable("upstream down")
    with capturedLogs() as events:
        assert result_of(index.get_tag("library/ubuntu", "22.04")) is None
    assert any("answering 404" in e["log_format"] for e in events)


def test_listings_are_capped_at_the_page_size(index: TagIndex, origin: FakeOrigin) -> None:
    manifest, _ = image(origin, "listed")
    for k in range(5):
        result_of(index.duplicate(REPO, f"v{k}", manifest, 0))
    assert result_of(index.list_tags(REPO, None, None)) == Page(("v0", "v1", "v2"), True)
    assert result_of(index.list_tags(REPO, 100, "v2")) == Page(("v3", "v4"), False)
    assert result_of(index.list_tags("nobody/here", None, None)) is None
    assert result_of(index.list_repositories(None, None)) == Page((REPO,), False)


def test_manifest_records_are_checked_against_the_origin(index: TagIndex, origin: FakeOrigin) -> None:
    manifest, _ = image(origin, "rec")
    size = len(origin.blobs[manifest])
    record = ManifestRecord(digest=manifest, media_type="application/vnd.oci.image.manifest.v1+json", size=size)
    assert result_of(index.put_manifest(REPO, record)) is True
    assert result_of(index.put_manifest(REPO, record)) is False
    assert result_of(index.get_manifest(REPO, manifest)) == record
    with pytest.raises(InvalidRecord, match=f"record size {size + 1} but the origin has {size} bytes"):
        result_of(index.put_manifest(REPO, ManifestRecord(manifest, record.media_type, size + 1)))
    absent, _ = blob("absent")
    with pytest.raises(Rejected) as info:
        result_of(index.put_manifest(REPO, ManifestRecord(absent, record.media_type, 1)))
    assert (info.value.message, info.value.missing) == (f"manifest {absent} missing on the origin", [absent])
    # Without an archive, a record this node lacks is not read from the origin.
    other, _ = image(origin, "other")
    assert result_of(index.get_manifest(REPO, other)) is None
