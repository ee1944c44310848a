"""TagStore over a real SQLite file in tmp_path.

Most tests use the production pool with an inline thread pool (synchronous,
no waiting); ``test_real_thread_pool_*`` run the untouched pool on the real
reactor through pytest-twisted.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
import pytest_twisted
from buildindex_fakes import InlineReactor, open_store, result_of

from kraken.buildindex.tags import SCHEMA_VERSION, TagStore, open_pool
from kraken.core import Digest
from kraken.registry.source import ManifestRecord, Page
from kraken.sqlite import SchemaError

D1 = Digest.from_bytes(b"one")
D2 = Digest.from_bytes(b"two")
D3 = Digest.from_bytes(b"three")


@pytest.fixture
def db(tmp_path: Any) -> str:
    return str(tmp_path / "tags.db")


@pytest.fixture
def reactor() -> InlineReactor:
    r = InlineReactor()
    r.advance(1000.0)
    return r


@pytest.fixture
def store(db: str, reactor: InlineReactor) -> Any:
    s = open_store(db, reactor, max_page=5)
    yield s
    s.stopService()


def run(work: Any) -> Any:
    return result_of(work)


def record(data: bytes, subject: Digest | None = None, artifact_type: str | None = None) -> ManifestRecord:
    return ManifestRecord(
        digest=Digest.from_bytes(data),
        media_type="application/vnd.oci.image.manifest.v1+json",
        size=len(data),
        artifact_type=artifact_type,
        subject=subject,
        annotations={"k": "v"} if subject else None,
    )


def test_put_and_get_tag(store: TagStore) -> None:
    assert run(store.get_tag("a/b", "v1")) is None
    assert run(store.put_tag("a/b", "v1", D1)) is None
    assert run(store.get_tag("a/b", "v1")) == D1
    assert run(store.get_tag("a/b", "v2")) is None
    assert run(store.get_tag("a", "v1")) is None


def test_overwrite_returns_previous_and_records_time(store: TagStore, db: str, reactor: InlineReactor) -> None:
    run(store.put_tag("r", "latest", D1))
    reactor.advance(5.0)
    assert run(store.put_tag("r", "latest", D2)) == D1
    assert run(store.get_tag("r", "latest")) == D2
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT repo, tag, digest, updated FROM tags").fetchall()
    assert rows == [("r", "latest", str(D2), 1005.0)]


def test_list_tags_pagination(store: TagStore) -> None:
    for tag in ["v3", "v1", "v5", "v2", "v4", "v6", "v7"]:
        run(store.put_tag("r", tag, D1))
    run(store.put_tag("other", "v0", D1))
    assert run(store.list_tags("r", 2, None)) == Page(("v1", "v2"), True)
    assert run(store.list_tags("r", 2, "v2")) == Page(("v3", "v4"), True)
    assert run(store.list_tags("r", 3, "v4")) == Page(("v5", "v6", "v7"), False)
    assert run(store.list_tags("r", 3, "v7")) == Page((), False)
    assert run(store.list_tags("r", 3, "v35")) == Page(("v4", "v5", "v6"), True)
    # n is capped at max_page (5); None means max_page
    assert run(store.list_tags("r", 100, None)) == Page(("v1", "v2", "v3", "v4", "v5"), True)
    assert run(store.list_tags("r", None, "v2")) == Page(("v3", "v4", "v5", "v6", "v7"), False)
    assert run(store.list_tags("r", 0, None)) == Page((), True)


def test_list_tags_sorts_bytewise(store: TagStore) -> None:
    tags = ["b", "B", "a", "_x", "A1", "a-b", "a.b", "a_b", "Z"]
    for tag in tags:
        run(store.put_tag("r", tag, D1))
    first = run(store.list_tags("r", None, None))
    second = run(store.list_tags("r", None, first.items[-1]))
    assert not second.more
    listed = list(first.items + second.items)
    assert listed == sorted(tags, key=lambda t: t.encode())
    assert listed == ["A1", "B", "Z", "_x", "a", "a-b", "a.b", "a_b", "b"]


def test_list_tags_unknown_repository_is_none(store: TagStore) -> None:
    assert run(store.list_tags("nope", None, None)) is None
    run(store.put_manifest("manifests-only", record(b"m")))
    # a repository with manifests but no tags exists, with no tags
    assert run(store.list_tags("manifests-only", None, None)) == Page((), False)
    run(store.put_tag("r", "v1", D1))
    # past the end of a known repository: empty, not unknown
    assert run(store.list_tags("r", None, "zzz")) == Page((), False)


def test_list_repositories(store: TagStore) -> None:
    assert run(store.list_repositories(None, None)) == Page((), False)
    for repo in ["b/c", "a", "a/b", "B", "a-z"]:
        run(store.put_tag(repo, "v1", D1))
    run(store.put_tag("a", "v2", D1))
    run(store.put_manifest("m/only", record(b"m")))
    run(store.put_manifest("a", record(b"m")))
    expected = sorted(["b/c", "a", "a/b", "B", "a-z", "m/only"], key=str.encode)
    assert expected == ["B", "a", "a-z", "a/b", "b/c", "m/only"]
    assert run(store.list_repositories(2, None)) == Page(("B", "a"), True)
    assert run(store.list_repositories(2, "a")) == Page(("a-z", "a/b"), True)
    assert run(store.list_repositories(10, "a/b")) == Page(("b/c", "m/only"), False)
    assert run(store.list_repositories(None, None)) == Page(tuple(expected[:5]), True)


def test_manifest_records_and_referrers(store: TagStore) -> None:
    subject = Digest.from_bytes(b"subject")
    plain = record(b"plain")
    sig = record(b"sig", subject=subject, artifact_type="application/vnd.example.sig")
    sbom = record(b"sbom", subject=subject, artifact_type="application/spdx+json")
    elsewhere = record(b"elsewhere", subject=subject)
    for r in (plain, sig, sbom):
        run(store.put_manifest("r", r))
    run(store.put_manifest("other", elsewhere))
    assert run(store.get_manifest("r", plain.digest)) == plain
    assert run(store.get_manifest("r", sig.digest)) == sig
    assert run(store.get_manifest("other", sig.digest)) is None
    assert run(store.referrers("r", subject)) == sorted([sig, sbom], key=lambda r: str(r.digest))
    assert run(store.referrers("other", subject)) == [elsewhere]
    assert run(store.referrers("r", plain.digest)) == []
    # re-putting replaces the record (and its subject)
    moved = record(b"sig", subject=None)
    run(store.put_manifest("r", moved))
    assert run(store.get_manifest("r", sig.digest)) == moved
    assert run(store.referrers("r", subject)) == [sbom]


def test_restart_keeps_everything(db: str) -> None:
    first = open_store(db, InlineReactor())
    run(first.put_tag("a/b", "v1", D1))
    run(first.put_tag("a/b", "v2", D2))
    rec = record(b"x", subject=D3)
    run(first.put_manifest("a/b", rec))
    first.stopService()

    second = open_store(db, InlineReactor())
    try:
        assert run(second.get_tag("a/b", "v1")) == D1
        assert run(second.list_tags("a/b", None, None)) == Page(("v1", "v2"), False)
        assert run(second.get_manifest("a/b", rec.digest)) == rec
        assert run(second.referrers("a/b", D3)) == [rec]
        assert run(second.list_repositories(None, None)) == Page(("a/b",), False)
    finally:
        second.stopService()


def test_database_is_wal_with_schema_version(store: TagStore, db: str) -> None:
    run(store.put_tag("r", "t", D1))
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "manifests_by_subject" in indexes


def test_failed_write_rolls_back(store: TagStore, db: str) -> None:
    run(store.put_tag("r", "t", D1))

    def broken(txn: Any) -> None:
        txn.execute("BEGIN IMMEDIATE")
        txn.execute("UPDATE tags SET digest = 'x'")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run(store._pool.runInteraction(broken))
    assert run(store.get_tag("r", "t")) == D1


def test_newer_schema_is_refused(db: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    store = open_store(db, InlineReactor())
    try:
        with pytest.raises(SchemaError):
            run(store.get_tag("r", "t"))
    finally:
        store.stopService()


@pytest_twisted.ensureDeferred
async def test_real_thread_pool_round_trip_and_restart(db: str) -> None:
    from twisted.internet import reactor

    first = TagStore(open_pool(db, reactor), clock=reactor)
    first.startService()
    try:
        await first.put_tag("a/b", "v1", D1)
        assert await first.put_tag("a/b", "v1", D2) == D1
        await first.put_manifest("a/b", record(b"x", subject=D3))
        assert await first.get_tag("a/b", "v1") == D2
    finally:
        first.stopService()

    second = TagStore(open_pool(db, reactor), clock=reactor)
    second.startService()
    try:
        assert await second.get_tag("a/b", "v1") == D2
        assert await second.list_tags("a/b", None, None) == Page(("v1",), False)
        assert [r.digest for r in await second.referrers("a/b", D3)] == [Digest.from_bytes(b"x")]
    finally:
        second.stopService()
    assert [c for c in reactor.getDelayedCalls() if c.active()] == []
