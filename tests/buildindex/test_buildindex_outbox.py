"""The outbox: copies of tags queued in the tag database in the same transaction as the tag, the
latest digest per destination, surviving a reopen, drained by the duplicate loop."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from buildindex_fakes import InlineReactor, open_store, result_of
from writeback_harness import inline_clock  # noqa: F401  (the reactor fixture)

from kraken.buildindex.client import TagRefused
from kraken.buildindex.duplicate import Duplicator
from kraken.buildindex.outbox import NODE, REMOTE, Copy
from kraken.buildindex.tags import TagStore
from kraken.core import Digest

D1 = Digest.from_bytes(b"one")
D2 = Digest.from_bytes(b"two")
D3 = Digest.from_bytes(b"three")
B = "http://bi-2:15004"
C = "http://bi-3:15004"


@pytest.fixture
def db(tmp_path: Any) -> str:
    return str(tmp_path / "tags.db")


@pytest.fixture
def store(db: str, reactor: InlineReactor) -> Any:
    s = open_store(db, reactor)
    yield s
    s.stopService()


def queued(store: TagStore, kind: str = NODE) -> list[tuple[str, str, str, Digest]]:
    return [(t.dest, t.repo, t.tag, t.digest) for t in result_of(store.outbox(kind).pending())]


class Receiver:
    """A neighbour that records what it receives, or fails while ``error`` is set."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str, Digest, float]] = []
        self.error: Exception | None = None

    async def duplicate_tag(self, repo: str, tag: str, digest: Digest, *, delay: float) -> None:
        if self.error is not None:
            raise self.error
        self.got.append((repo, tag, digest, delay))


def test_the_latest_digest_per_destination_wins(store: TagStore) -> None:
    copies = [Copy(NODE, B, 10.0), Copy(NODE, C, 20.0)]
    result_of(store.put_tag("r", "v1", D1, copies=copies))
    result_of(store.put_tag("r", "v1", D2, copies=copies))
    result_of(store.put_tag("r", "v2", D3, copies=copies[:1]))
    assert queued(store) == [(B, "r", "v1", D2), (B, "r", "v2", D3), (C, "r", "v1", D2)]
    assert queued(store, REMOTE) == []  # kinds are separate queues


def test_copies_are_written_in_the_same_transaction_as_the_tag(store: TagStore) -> None:
    result_of(store.put_tag("r", "v1", D1, copies=[Copy(NODE, B)]))
    bad: Any = Copy(None, B)  # type: ignore[arg-type]  # the outbox insert fails (kind NOT NULL)
    with pytest.raises(sqlite3.IntegrityError):
        result_of(store.put_tag("r", "v1", D2, copies=[Copy(NODE, C), bad]))
    # rolled back together: the tag did not move and no copy of D2 is queued
    assert result_of(store.get_tag("r", "v1")) == D1
    assert queued(store) == [(B, "r", "v1", D1)]


def test_a_send_that_finishes_after_the_tag_moved_keeps_the_newer_copy(store: TagStore) -> None:
    outbox = store.outbox(NODE)
    result_of(store.put_tag("r", "v1", D1, copies=[Copy(NODE, B)]))
    [old] = result_of(outbox.pending())
    result_of(store.put_tag("r", "v1", D2, copies=[Copy(NODE, B)]))
    assert result_of(outbox.done(old)) is False
    assert queued(store) == [(B, "r", "v1", D2)]


def test_the_queue_survives_a_reopen_and_is_drained(db: str, reactor: InlineReactor) -> None:
    store = open_store(db, reactor)
    result_of(store.put_tag("r", "v1", D1, copies=[Copy(NODE, B, 5.0)]))
    result_of(store.put_tag("r", "v2", D2, copies=[Copy(NODE, B, 5.0)]))
    store.stopService()  # a crash before anything was sent
    store = open_store(db, reactor)
    try:
        receiver = Receiver()
        loop = Duplicator([(B, receiver)], store.outbox(NODE), clock=reactor, stagger=5.0, backoff=1.0)
        loop.startService()
        assert result_of(loop.when_idle()) is None
        assert sorted(receiver.got) == [("r", "v1", D1, 5.0), ("r", "v2", D2, 5.0)]
        assert queued(store) == [] and loop.stats.sent == 2
        loop.stopService()
    finally:
        store.stopService()


def test_failures_are_kept_with_their_backoff_across_a_reopen(db: str, reactor: InlineReactor) -> None:
    store = open_store(db, reactor)
    receiver = Receiver()
    receiver.error = ConnectionRefusedError("down")
    loop = Duplicator([(B, receiver)], store.outbox(NODE), clock=reactor, stagger=5.0, backoff=2.0, backoff_max=8.0)
    loop.startService()
    result_of(store.put_tag("r", "v1", D1, copies=loop.copies()))
    loop.kick()
    [task] = result_of(store.outbox(NODE).pending())
    assert (task.attempts, task.next_attempt) == (1, reactor.seconds() + 2.0)
    loop.stopService()
    store.stopService()
    store = open_store(db, reactor)
    try:
        receiver.error = None
        loop = Duplicator([(B, receiver)], store.outbox(NODE), clock=reactor, stagger=5.0, backoff=2.0)
        loop.startService()
        assert receiver.got == []  # still waiting out its backoff
        reactor.advance(2.0)
        assert receiver.got == [("r", "v1", D1, 5.0)]
        loop.stopService()
    finally:
        store.stopService()


def test_copies_for_a_node_no_longer_configured_are_dropped(store: TagStore, reactor: InlineReactor) -> None:
    result_of(store.put_tag("r", "v1", D1, copies=[Copy(NODE, C)]))
    loop = Duplicator([(B, Receiver())], store.outbox(NODE), clock=reactor, stagger=5.0)
    loop.startService()
    assert queued(store) == [] and loop.stats.dropped == 1
    loop.stopService()


def test_a_refusal_is_given_up_after_attempts(store: TagStore, reactor: InlineReactor) -> None:
    receiver = Receiver()
    receiver.error = TagRefused("missing", [D1])
    loop = Duplicator([(B, receiver)], store.outbox(NODE), clock=reactor, stagger=5.0, attempts=2, backoff=1.0)
    loop.startService()
    result_of(store.put_tag("r", "v1", D1, copies=loop.copies()))
    loop.kick()
    reactor.advance(1.0)
    assert queued(store) == [] and loop.stats.given_up == 1
    loop.stopService()
