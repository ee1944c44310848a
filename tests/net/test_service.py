"""ServiceClient, the one base of every treq client, against a canned server behind StubTreq."""

from __future__ import annotations

from typing import Any

from http_fakes import Canned
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from kraken.net import HTTPClientConfig, HTTPStatusError
from kraken.net.service import ERROR_BODY, ServiceClient


def client(server: Canned, **config: Any) -> tuple[ServiceClient, StubTreq]:
    stub = StubTreq(server)
    return ServiceClient(http=stub, base="http://svc.test/", clock=Clock(), config=HTTPClientConfig(**config)), stub


def result(d: Any, stub: StubTreq) -> Any:
    out: list[Any] = []
    Deferred.fromCoroutine(d).addBoth(out.append)
    stub.flush()
    return out[0]


def test_unexpected_keeps_the_start_of_the_body_and_drain_frees_the_connection() -> None:
    server = Canned(418, b"x" * (ERROR_BODY + 10))
    svc, stub = client(server)

    async def unexpected() -> HTTPStatusError:
        response = await svc._request("GET", f"{svc._base}/teapot")
        return await svc._unexpected("GET", "u", response)

    error = result(unexpected(), stub)
    assert (error.code, error.body) == (418, b"")  # more than ERROR_BODY: the body is left out
    server.body = b"short and stout"
    error = result(unexpected(), stub)
    assert (error.code, error.body) == (418, b"short and stout")


def test_call_raises_an_unexpected_status_and_retrying_follows_the_config() -> None:
    server = Canned(503, b"down")
    svc, stub = client(server, retries=0)
    failure = result(svc._retrying("get", lambda: svc._call("GET", f"{svc._base}/x", frozenset({200}))), stub)
    assert failure.value.code == 503 and failure.value.body == b"down" and server.seen == 1
    server.code = 200
    assert result(svc._call("GET", f"{svc._base}/x", frozenset({200})), stub) == (200, b"down")


def test_the_timeout_of_a_big_transfer_grows_with_its_size() -> None:
    svc, _ = client(Canned(200, b""), timeout=10.0, min_transfer_rate=1 << 20)
    assert svc._slow_timeout(5 << 20) == 15.0
