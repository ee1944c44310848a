"""AnnounceResource (POST /announce on plain twisted.web) through DummyRequest, and the routing to it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from io import BytesIO
from typing import Any

import pytest
from tracker_fakes import App, announce_doc, peer
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from kraken.core.peer import PeerInfo
from kraken.tracker.http import MAX_ANNOUNCE_BODY

ORIGIN = peer(200, complete=True, origin=True)
GOOD = announce_doc(peer(1))


def post(body: bytes, method: bytes = b"POST", length: int | None = None) -> DummyRequest:
    request = DummyRequest([b"announce"])
    request.method = method
    request.path = b"/announce"
    request.content = BytesIO(body)
    request.requestHeaders.setRawHeaders(b"Content-Length", [b"%d" % (len(body) if length is None else length)])
    return request


def answer(request: DummyRequest, rendered: bytes | int) -> tuple[int, Any]:
    """Status and JSON of an answer, whether returned (``bytes``) or written later."""
    body = b"".join(request.written) if rendered is NOT_DONE_YET else rendered
    assert isinstance(body, bytes)
    assert request.responseHeaders.getRawHeaders(b"Content-Type") == [b"application/json"]
    assert body.endswith(b"\n")
    return request.responseCode or 200, json.loads(body)


class HeldStore:
    """An IPeerStore whose calls wait until the test fires them, like a remote (Redis) store."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []
        self.cancelled = 0

    def _held(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred(lambda _: self._cancel())
        self.pending.append(d)
        return d

    def _cancel(self) -> None:
        self.cancelled += 1

    def update(self, info_hash: str, peer: PeerInfo, now: float, source: str) -> Deferred[None]:
        return self._held()

    def report_unreachable(self, info_hash: str, peer_ids: Sequence[str], source: str, now: float) -> Deferred[None]:
        return self._held()

    def peers(self, info_hash: str, limit: int, now: float) -> Deferred[list[PeerInfo]]:
        return self._held()


class Fixture(App):
    """The tracker app, rendering announces straight into ``DummyRequest``s."""

    def __init__(self, store: Any = None) -> None:
        super().__init__(origin_peers=[ORIGIN], store=store)

    def render(self, request: DummyRequest) -> bytes | int:
        rendered: bytes | int = self.http.announce_resource.render(request)
        return rendered


@pytest.fixture
def fx() -> Fixture:
    return Fixture()


def held_announce() -> tuple[HeldStore, DummyRequest]:
    """A good announce rendered against a store whose answers the test gives: answered later, not at once."""
    store = HeldStore()
    fx = Fixture(store)
    request = post(json.dumps(GOOD).encode())
    assert fx.render(request) is NOT_DONE_YET
    return store, request


def test_an_announce_is_answered_at_once_with_the_same_json_as_before(fx: Fixture) -> None:
    fx.render(post(json.dumps(announce_doc(peer(2, complete=True))).encode()))
    request = post(json.dumps(GOOD).encode())
    rendered = fx.render(request)
    assert isinstance(rendered, bytes), "the in-memory store answers without a Deferred left waiting"
    expected = {"peers": [ORIGIN.to_json(), peer(2, complete=True).to_json()], "interval": 3.0}
    assert answer(request, rendered) == (200, expected)
    # Byte for byte what kraken.net.server.json_response wrote through Klein.
    assert rendered == json.dumps(expected, separators=(",", ":")).encode() + b"\n"
    assert {p.peer_id for p in fx.store.live(GOOD["info_hash"], 10, 0.0)} == {peer(1).peer_id, peer(2).peer_id}


def test_a_completed_peer_gets_an_empty_list(fx: Fixture) -> None:
    request = post(json.dumps(announce_doc(peer(2, complete=True))).encode())
    assert answer(request, fx.render(request)) == (200, {"peers": [], "interval": 3.0})
    assert fx.origin.peer_calls == [], "a seeder needs no origins"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "announce body must be JSON"),
        (b"[1]", "announce body must be a JSON object"),
        (b"\xff", "announce body must be JSON"),
        (json.dumps({**GOOD, "origin": True}).encode(), "announce has unknown keys origin"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "port"}).encode(), "announce is missing port"),
        (json.dumps({**GOOD, "port": 0}).encode(), "port must be an integer in 1-65535, not 0"),
    ],
)
def test_bad_announces_are_400(fx: Fixture, body: bytes, message: str) -> None:
    request = post(body)
    assert answer(request, fx.render(request)) == (400, {"error": message})
    assert len(fx.store) == 0


def test_an_oversized_body_is_413_by_its_length_or_its_bytes(fx: Fixture) -> None:
    big = json.dumps({**GOOD, "pad": "x" * MAX_ANNOUNCE_BODY}).encode()
    request = post(big)
    assert answer(request, fx.render(request)) == (413, {"error": f"body larger than {MAX_ANNOUNCE_BODY} bytes"})
    request = post(big, length=100)  # a Content-Length that lies
    assert answer(request, fx.render(request))[0] == 413
    assert len(fx.store) == 0


@pytest.mark.parametrize("method", [b"GET", b"PUT", b"DELETE", b"OPTIONS", b"HEAD"])
def test_other_methods_are_405(fx: Fixture, method: bytes) -> None:
    request = post(b"", method=method)
    assert answer(request, fx.render(request)) == (405, {"error": "The method is not allowed for the requested URL."})


def test_a_store_failure_is_a_logged_500() -> None:
    store = HeldStore()
    fx = Fixture(store)
    store.update = lambda *a: fail(RuntimeError("store down"))  # type: ignore[method-assign]
    request = post(json.dumps(GOOD).encode())
    with capturedLogs() as events:
        rendered = fx.render(request)
    assert answer(request, rendered) == (500, {"error": "internal error"})
    [failure] = [e["log_failure"] for e in events if "log_failure" in e]
    assert failure.check(RuntimeError)


def test_a_waiting_store_is_awaited_then_answered_with_a_length() -> None:
    store, request = held_announce()
    assert request.written == []
    store.pending[0].callback(None)  # update
    assert request.written == []
    store.pending[1].callback([peer(5, complete=True)])  # peers
    assert request.finished == 1
    body = b"".join(request.written)
    assert json.loads(body) == {"peers": [ORIGIN.to_json(), peer(5, complete=True).to_json()], "interval": 3.0}
    assert request.responseHeaders.getRawHeaders(b"Content-Length") == [b"%d" % len(body)]
    assert request.responseCode == 200


def test_a_late_store_failure_is_a_500() -> None:
    store, request = held_announce()
    with capturedLogs():
        store.pending[0].errback(RuntimeError("store down"))
    assert (request.responseCode, json.loads(b"".join(request.written))) == (500, {"error": "internal error"})
    assert request.finished == 1


def test_a_client_gone_mid_await_cancels_the_work_and_nothing_is_written() -> None:
    store, request = held_announce()
    with capturedLogs() as events:
        request.processingFailed(Failure(ConnectionDone()))  # what twisted.web does when the connection drops
    assert store.cancelled == 1, "the awaited store call is cancelled"
    assert request.written == [] and request.finished == 0
    assert len(store.pending) == 1, "the coroutine stopped: no lookup after the cancelled update"
    assert [e for e in events if "log_failure" in e] == []


def test_a_failure_after_the_client_went_away_is_logged_not_written() -> None:
    held: Deferred[None] = Deferred()

    class Stubborn(HeldStore):
        async def update(self, info_hash: str, peer: PeerInfo, now: float, source: str) -> None:  # type: ignore[override]
            try:
                await held
            except CancelledError:
                raise RuntimeError("could not let go") from None

    fx = Fixture(Stubborn())
    request = post(json.dumps(GOOD).encode())
    assert fx.render(request) is NOT_DONE_YET
    with capturedLogs() as events:
        request.processingFailed(Failure(ConnectionDone()))
    assert request.written == [] and request.finished == 0
    [failure] = [e["log_failure"] for e in events if "log_failure" in e]
    assert failure.check(RuntimeError)


# -- routing: TrackerResource in front of the Klein app --


def test_announce_and_the_rest_are_routed() -> None:
    app = App(origin_peers=[ORIGIN])
    assert app.request("GET", "/health") == (200, b"OK\n")
    code, doc = app.announce(GOOD)
    assert (code, doc) == (200, {"peers": [ORIGIN.to_json()], "interval": 3.0})
    # Spellings only Klein normalises reach the same resource through the Klein route.
    for path in ("//announce", "/%61nnounce"):
        code, doc = app.json("POST", path, data=json.dumps(announce_doc(peer(2))).encode())
        assert code == 200 and peer(1).to_json() in doc["peers"], path
    code, doc = app.json("POST", "/announce/", data=json.dumps(GOOD).encode())
    assert code == 404 and "error" in doc


def test_the_origin_lookup_waits_only_for_a_cold_cache(fx: Fixture) -> None:
    fx.origin.peers_hold = True
    request = post(json.dumps(GOOD).encode())
    assert fx.render(request) is NOT_DONE_YET, "first announce of a blob: the origin is asked"
    fx.origin.release()
    assert request.finished == 1
    second = post(json.dumps(announce_doc(peer(2))).encode())
    assert isinstance(fx.render(second), bytes), "cached now: answered at once"
