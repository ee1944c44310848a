"""The proxy's ``limits:`` (``kraken.proxy.limits`` and the upload limits ``proxy_api`` sets): per-client request
rate (429 TOOMANYREQUESTS with Retry-After, a bounded table of clients), and the upload limits wired from the
config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from registry.memory import MemorySource
from results import result_of
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from kraken.core import Digest
from kraken.proxy.config import LimitsConfig, RegistryConfig
from kraken.proxy.http import proxy_api
from kraken.proxy.limits import ClientRates, RateLimited, rate_limited
from kraken.store import UploadArea
from kraken.workers import InlineWorker

BASE = "http://proxy.test"


def serve(tmp_path: Path, limits: LimitsConfig, clock: Clock) -> tuple[Any, StubTreq, UploadArea]:
    source = MemorySource(str(tmp_path / "blobs"))
    uploads = UploadArea(str(tmp_path / "uploads"), InlineWorker(), max_body=limits.max_blob_size or None)
    api = proxy_api(source, uploads, clock=clock, config=RegistryConfig(), limits=limits)
    return api, StubTreq(rate_limited(api.resource(), limits, clock=clock)), uploads


def call(stub: StubTreq, method: str, path: str, body: bytes = b"") -> tuple[int, Any, Any]:
    resp = result_of(stub.request(method, BASE + path, data=body), stub.flush)
    content = result_of(stub.content(resp), stub.flush)
    is_json = b"json" in (resp.headers.getRawHeaders(b"content-type") or [b""])[0]
    return resp.code, resp.headers, json.loads(content) if is_json and content else content


def test_no_limits_by_default_and_no_wrapper(tmp_path: Path) -> None:
    limits = LimitsConfig()
    assert (limits.max_blob_size, limits.max_upload_sessions, limits.max_upload_sessions_per_client) == (0, 0, 0)
    assert limits.requests_per_second == 0
    inner = Resource()
    assert rate_limited(inner, limits, clock=Clock()) is inner


def test_a_client_over_its_rate_gets_429_with_retry_after_then_its_tokens_back(tmp_path: Path) -> None:
    clock = Clock()
    _, stub, _ = serve(tmp_path, LimitsConfig(requests_per_second=0.5, request_burst=3), clock)
    assert [call(stub, "GET", "/v2/")[0] for _ in range(3)] == [200, 200, 200]
    code, headers, body = call(stub, "GET", "/v2/")
    assert code == 429
    assert headers.getRawHeaders("retry-after") == ["2"]
    assert headers.getRawHeaders("docker-distribution-api-version") == ["registry/2.0"]
    [error] = body["errors"]
    assert error["code"] == "TOOMANYREQUESTS" and "at most 0.5 a second" in error["message"]
    assert call(stub, "GET", "/health")[0] == 200  # never limited
    clock.advance(2.0)
    assert call(stub, "GET", "/v2/")[0] == 200
    assert call(stub, "GET", "/v2/")[0] == 429
    assert clock.getDelayedCalls() == []  # a refused request leaves no timer behind


def test_each_client_has_its_own_bucket_and_the_table_is_bounded() -> None:
    clock = Clock()
    rates = ClientRates(1.0, 1, max_clients=3, clock=clock)
    assert rates.take("a") is None
    assert rates.take("a") == 1.0
    assert rates.take("b") is None  # another client is not held up by a
    for client in ("c", "d", "e"):
        assert rates.take(client) is None
    assert len(rates) == 3  # a and b, least recently seen, were forgotten
    assert rates.take("a") is None  # forgotten: a full bucket again (after 0 s, the only cost of the bound)
    for i in range(10_000):
        rates.take(f"10.{i // 256}.{i % 256}.1")
    assert len(rates) == 3 and clock.getDelayedCalls() == []


def test_the_wrapper_passes_what_it_allows_to_the_registry(tmp_path: Path) -> None:
    clock = Clock()
    api, stub, _ = serve(tmp_path, LimitsConfig(requests_per_second=100.0, request_burst=100), clock)
    assert isinstance(rate_limited(Resource(), LimitsConfig(requests_per_second=1.0), clock=clock), RateLimited)
    assert call(stub, "POST", "/v2/team/app/blobs/uploads/")[0] == 202 and len(api.sessions) == 1


def test_upload_limits_come_from_the_config(tmp_path: Path) -> None:
    limits = LimitsConfig(max_blob_size=100, max_upload_sessions=5, max_upload_sessions_per_client=1)
    api, stub, uploads = serve(tmp_path, limits, Clock())
    assert call(stub, "POST", "/v2/team/app/blobs/uploads/")[0] == 202
    code, headers, body = call(stub, "POST", "/v2/team/app/blobs/uploads/")
    assert code == 429 and body["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert headers.getRawHeaders("retry-after") == ["5"]
    data = b"x" * 101
    code, _, body = call(stub, "POST", f"/v2/team/other/blobs/uploads/?digest={Digest.from_bytes(data)}", data)
    assert code == 413 and body["errors"][0]["code"] == "SIZE_INVALID"
    assert len(api.sessions) == 1
    assert uploads._max_body == 100
