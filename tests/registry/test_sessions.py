"""Upload sessions and their expiry (``kraken.registry.sessions``), through the API."""

from __future__ import annotations

import os
import time

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
