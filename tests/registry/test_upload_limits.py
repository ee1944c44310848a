"""Upload limits (``kraken.registry.sessions.UploadLimits``): the largest blob (413 SIZE_INVALID, nothing stored),
upload sessions in all and per client (429 TOOMANYREQUESTS with Retry-After), and the idle TTL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from kraken.core import Digest
from kraken.registry.errors import TooManyRequests
from kraken.registry.sessions import SESSIONS_RETRY_AFTER, UploadLimits, UploadSessions
from kraken.store import BodyTooLarge

from .conftest import Registry, chunked_request, parse_wire

LIMIT = 1000


@pytest.fixture
def limited(tmp_path: Path, clock: task.Clock) -> Registry:
    reg = Registry(tmp_path, clock)
    reg.api.sessions.limits = UploadLimits(max_blob_size=LIMIT, max_sessions=4, max_sessions_per_client=2)
    return reg


def nothing_stored(reg: Registry) -> bool:
    assert reg.uploads is not None
    return os.listdir(reg.uploads._root) == [] and reg.source.calls == [] and len(reg.api.sessions) == 0


def assert_too_large(r: object) -> None:
    assert r.code == 413, r.body  # type: ignore[attr-defined]
    assert r.error_code == "SIZE_INVALID"  # type: ignore[attr-defined]
    assert f"at most {LIMIT} bytes" in r.json()["errors"][0]["message"]  # type: ignore[attr-defined]


def test_a_monolithic_push_over_the_limit_is_413_before_a_session(limited: Registry) -> None:
    data = b"x" * (LIMIT + 1)
    r = limited.request("POST", f"/v2/a/b/blobs/uploads/?digest={Digest.from_bytes(data)}", body=data)
    assert_too_large(r)
    assert nothing_stored(limited)


def test_a_blob_at_the_limit_is_taken(limited: Registry) -> None:
    limited.push_blob("a/b", b"y" * LIMIT)


def test_a_chunk_that_takes_the_upload_over_the_limit_deletes_it(limited: Registry) -> None:
    location = limited.start_upload("a/b")
    r = limited.request("PATCH", location, body=b"1" * 600, headers={"Content-Range": "0-599"})
    assert r.code == 202
    r = limited.request("PATCH", location, body=b"2" * 600, headers={"Content-Range": "600-1199"})
    assert_too_large(r)
    assert nothing_stored(limited)
    assert limited.request("GET", location).error_code == "BLOB_UPLOAD_UNKNOWN"


def test_a_streamed_chunk_over_the_limit_is_refused_by_its_running_size(limited: Registry) -> None:
    location = limited.start_upload("a/b")
    status, _, body = parse_wire(limited.raw(chunked_request("PATCH", location, b"z" * (LIMIT + 5))))
    assert status == 413 and b"SIZE_INVALID" in body
    assert nothing_stored(limited)


def test_a_final_put_over_the_limit_is_refused(limited: Registry) -> None:
    location = limited.start_upload("a/b")
    data = b"q" * (LIMIT + 1)
    r = limited.request("PUT", f"{location}?digest={Digest.from_bytes(data)}", body=data)
    assert_too_large(r)
    assert nothing_stored(limited)


def test_a_body_refused_by_the_spool_is_413_and_its_upload_deleted(limited: Registry) -> None:
    location = limited.start_upload("a/b")
    refusal = limited.wait(limited.api.body_refused(b"PATCH", location.encode(), Failure(BodyTooLarge(LIMIT, 4096))))
    assert refusal.status == 413 and b'"code":"SIZE_INVALID"' in refusal.body
    assert nothing_stored(limited)


def test_sessions_over_the_limit_per_client_are_429_with_retry_after(limited: Registry) -> None:
    first, second = limited.start_upload("a/b"), limited.start_upload("a/b")
    r = limited.request("POST", "/v2/a/b/blobs/uploads/")
    assert r.code == 429 and r.error_code == "TOOMANYREQUESTS"
    assert r.header("Retry-After") == str(SESSIONS_RETRY_AFTER)
    assert len(limited.api.sessions) == 2 and len(os.listdir(limited.uploads._root)) == 2  # type: ignore[union-attr]
    assert limited.request("DELETE", first).code == 204  # one ends: room for the next
    limited.start_upload("a/b")
    assert second


def test_sessions_over_the_total_limit_whatever_the_client(limited: Registry) -> None:
    sessions = limited.api.sessions
    for client in ("10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3"):
        limited.wait(_start(sessions, client))
    with pytest.raises(TooManyRequests, match="4 upload sessions are open"):
        limited.wait(_start(sessions, "10.0.0.4"))
    with pytest.raises(TooManyRequests, match=r"2 upload sessions are open for 10\.0\.0\.1"):
        sessions.limits = UploadLimits(max_sessions_per_client=2)
        limited.wait(_start(sessions, "10.0.0.1"))
    limited.wait(_start(sessions, "10.0.0.2"))


def test_idle_sessions_expire_with_their_files_and_free_their_room(limited: Registry) -> None:
    limited.start_upload("a/b")
    limited.start_upload("a/b")
    assert limited.request("POST", "/v2/a/b/blobs/uploads/").code == 429
    assert limited.uploads is not None
    for name in os.listdir(limited.uploads._root):
        os.utime(os.path.join(limited.uploads._root, name), (0, 0))  # untouched for a long time
    gone = limited.wait(limited.api.expire_uploads(now=3600.0, max_age=60.0))
    assert len(gone) == 2 and nothing_stored(limited)
    limited.start_upload("a/b")


def _start(sessions: UploadSessions, client: str) -> Deferred[Any]:
    return Deferred.fromCoroutine(sessions.start("a/b", client=client))
