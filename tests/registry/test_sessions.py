"""Upload sessions and their expiry (``kraken.registry.sessions``), through the API."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from results import result_of
from twisted.internet.task import Clock

from kraken.registry.errors import BlobUploadInvalid, BlobUploadUnknown, Unsupported
from kraken.registry.sessions import UploadSessions
from kraken.store.uploads import UploadArea, UploadUnknown
from kraken.workers import InlineWorker

from .conftest import Registry


def uid_of(location: str) -> str:
    return location.rsplit("/", 1)[1]


def test_expire_uploads(registry: Registry) -> None:
    old = registry.start_upload("a")
    fresh = registry.start_upload("a")
    assert registry.uploads is not None
    path = registry.uploads.path(uid_of(old))
    os.utime(path, (time.time() - 7200, time.time() - 7200))
    expired = registry.wait(registry.api.expire_uploads(time.time(), 3600))
    assert expired == [uid_of(old)]
    assert registry.request("PATCH", old, body=b"x").error_code == "BLOB_UPLOAD_UNKNOWN"
    assert registry.request("PATCH", fresh, body=b"x").code == 202
    assert uid_of(old) not in registry.api.sessions


def test_expire_uploads_logs_failures(registry: Registry) -> None:
    from twisted.logger import capturedLogs

    async def boom(now: float, max_age: float) -> list[str]:
        raise OSError("disk gone")

    assert registry.uploads is not None
    registry.uploads.expire = boom  # type: ignore[method-assign]
    with capturedLogs() as events:
        assert registry.wait(registry.api.expire_uploads(0.0, 1.0)) == []
    assert any(e.get("log_failure") is not None for e in events)


# -- UploadSessions on its own ---------------------------------------------------------


@pytest.fixture
def sessions(tmp_path: Path) -> UploadSessions:
    return UploadSessions(UploadArea(str(tmp_path / "uploads"), InlineWorker()), clock=Clock(), read_only_message="ro")


def test_a_session_belongs_to_the_repository_it_started_in(sessions: UploadSessions) -> None:
    uid, session = result_of(sessions.start("team/app"))
    assert (uid in sessions, len(sessions)) == (True, 1)
    assert sessions.get("team/app", uid) is session
    with pytest.raises(BlobUploadUnknown):
        sessions.get("team/other", uid)
    with pytest.raises(BlobUploadUnknown):
        sessions.get("team/app", "0123456789abcdef0123456789abcdef")


def test_a_finishing_upload_is_not_idle(sessions: UploadSessions) -> None:
    uid, session = result_of(sessions.start("a", finishing=True))
    with pytest.raises(BlobUploadInvalid):
        sessions.idle("a", uid)
    session.finishing = False
    assert sessions.idle("a", uid) is session


def test_a_session_goes_with_its_upload(sessions: UploadSessions) -> None:
    uid, _ = result_of(sessions.start("a"))
    assert sessions.size(uid) == 0
    result_of(sessions.area().delete(uid))  # lost behind the session's back
    with pytest.raises(BlobUploadUnknown):
        sessions.size(uid)
    assert uid not in sessions


def test_discard_deletes_the_upload(sessions: UploadSessions) -> None:
    uid, _ = result_of(sessions.start("a"))
    result_of(sessions.discard(uid))
    assert uid not in sessions
    with pytest.raises(UploadUnknown):
        sessions.area().size(uid)
    result_of(sessions.discard_if_open(uid))  # already gone: nothing to do


def test_a_refused_body_drops_only_the_upload_of_that_repository(sessions: UploadSessions) -> None:
    uid, _ = result_of(sessions.start("a"))
    result_of(sessions.drop_refused("b", uid))
    assert uid in sessions
    result_of(sessions.drop_refused("a", uid))
    assert uid not in sessions
    with pytest.raises(UploadUnknown):
        sessions.area().size(uid)


def test_a_read_only_registry_has_no_uploads() -> None:
    sessions = UploadSessions(None, clock=Clock(), read_only_message="agents are read-only")
    with pytest.raises(Unsupported, match="agents are read-only"):
        sessions.area()
    with pytest.raises(BlobUploadUnknown):
        sessions.get("a", "0123456789abcdef0123456789abcdef")
    assert result_of(sessions.expire(0.0, 1.0)) == []
    result_of(sessions.drop_refused("a", "0123456789abcdef0123456789abcdef"))
