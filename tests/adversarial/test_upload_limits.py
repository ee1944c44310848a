"""Never-finished uploads against a real proxy process with ``limits:`` set: the session limits hold per client
address and in all (429 TOOMANYREQUESTS with Retry-After), a blob over the size limit is 413 SIZE_INVALID with
nothing kept, memory and disk stay bounded, idle sessions expire with their files (a short ``uploads.ttl``) and
free their room, and the per-client request rate answers 429 once its burst is spent."""

from __future__ import annotations

import http.client
import json
import os
import re
from typing import Any

from _fleet import Fleet

from kraken.core import Digest

PER_CLIENT, TOTAL, MAX_BLOB = 100, 150, 1 << 20
BURST = 400
EXPIRY_TIMEOUT = 60.0  # seconds; a safety rail for the sweep (every second with a 2 s TTL)


def ask(fleet: Fleet, method: str, path: str, source: str = "127.0.0.1", body: bytes = b"") -> tuple[int, Any, Any]:
    host, port = fleet.proxy.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        data = resp.read()
        kind = resp.getheader("Content-Type") or ""
        return resp.status, resp.headers, json.loads(data) if "json" in kind and data else data
    finally:
        conn.close()


def code_of(body: Any) -> str:
    [error] = body["errors"]
    return str(error["code"])


def uploads_on_disk(fleet: Fleet) -> list[str]:
    root = fleet.root("proxy-uploads")
    return [n for n in os.listdir(root) if re.fullmatch(r"[0-9a-f]{32}", n)]


def test_200_never_finished_uploads_hold_the_limits_and_expire(fleet: Any) -> None:
    limits = {
        "max_blob_size": MAX_BLOB,
        "max_upload_sessions": TOTAL,
        "max_upload_sessions_per_client": PER_CLIENT,
        "requests_per_second": 0.01,
        "request_burst": BURST,
    }
    f: Fleet = fleet(origins=1, replicas=1, agents=0, overrides={"proxy": {"limits": limits, "uploads": {"ttl": "2s"}}})
    proxy = f["proxy"]
    rss_before = proxy.rss()
    # 200 uploads started from one address, 100 from another: per client, then in all
    answers = [ask(f, "POST", "/v2/flood/one/blobs/uploads/") for _ in range(200)]
    answers += [ask(f, "POST", "/v2/flood/two/blobs/uploads/", source="127.0.0.2") for _ in range(100)]
    started = [headers["Location"] for status, headers, _ in answers if status == 202]
    refused = [(headers["Retry-After"], code_of(body)) for status, headers, body in answers if status == 429]
    assert len(started) == TOTAL and len(refused) == 300 - TOTAL
    assert set(refused) == {("5", "TOOMANYREQUESTS")}
    assert sum(1 for loc in started if "/flood/one/" in loc) == PER_CLIENT
    assert len(uploads_on_disk(f)) == TOTAL
    # over the blob size: refused as soon as known, nothing kept
    big = os.urandom(MAX_BLOB + 1)
    status, _, body = ask(f, "POST", f"/v2/flood/one/blobs/uploads/?digest={Digest.from_bytes(big)}", body=big)
    assert status == 413 and code_of(body) == "SIZE_INVALID"
    status, _, body = ask(f, "PATCH", started[0], body=big)
    assert status == 413 and code_of(body) == "SIZE_INVALID"
    assert len(uploads_on_disk(f)) == TOTAL - 1
    # bounded: no upload holds a byte, and the proxy grew by little
    root = f.root("proxy-uploads")
    assert sum(os.path.getsize(os.path.join(root, n)) for n in os.listdir(root)) == 0
    assert proxy.rss() - rss_before < 64 << 20
    # idle sessions expire with their files, and free their room
    for location in started[1:]:
        proxy.wait_for(f"expired upload {location.rsplit('/', 1)[1]}", EXPIRY_TIMEOUT)
    assert uploads_on_disk(f) == []
    status, headers, _ = ask(f, "POST", "/v2/flood/one/blobs/uploads/")
    assert status == 202
    # the per-client request rate: the burst spent, 429 with Retry-After (1 / 0.01 s); another address is not held up
    spent = 0
    while (answer := ask(f, "GET", "/v2/"))[0] == 200:
        spent += 1
        assert spent <= BURST
    status, headers, body = answer
    assert status == 429 and code_of(body) == "TOOMANYREQUESTS" and headers["Retry-After"] == "100"
    assert ask(f, "GET", "/health")[0] == 200
    assert ask(f, "GET", "/v2/", source="127.0.0.3")[0] == 200
