"""The lean announce path (``kraken.tracker.lean``): a tracker Site's channel on a StringTransport, fed raw
HTTP/1.1, answers exactly what twisted.web alone answers (bytes, metrics), however the bytes arrive."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest
from test_tracker_announce_resource import GOOD, ORIGIN, HeldStore
from tracker_fakes import App, announce_doc, peer
from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from kraken.net.metrics import Observation, new_registry, observed
from kraken.net.server import make_site
from kraken.tracker.config import TrackerConfig
from kraken.tracker.http import MAX_ANNOUNCE_BODY
from kraken.tracker.lean import LeanChannel, body_length, lean_announces
from kraken.tracker.peers import MemoryPeerStore
from kraken.tracker.stats import register_tracker, with_stats
from kraken.tracker.tap import tracker_service

_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


def post(doc: Any, headers: bytes = b"", target: bytes = b"/announce", version: bytes = b"HTTP/1.1") -> bytes:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    head = b"POST %s %s\r\nHost: tracker\r\nContent-Type: application/json\r\n" % (target, version)
    return head + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body


def chunked(doc: Any) -> bytes:
    body = json.dumps(doc).encode()
    return b"POST /announce HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
        len(body), body
    )  # fmt: skip


class Conn:
    """One connection to a fresh tracker's Site (metrics wired as the tap wires them), lean or not."""

    def __init__(self, lean: bool, store: Any = None) -> None:
        store = store if store is not None else MemoryPeerStore(30.0, Clock(), rng=random.Random(1))
        self.app = App(origin_peers=[ORIGIN], store=store)
        registry = new_registry()
        register_tracker(registry, store, self.app.http)
        self.observation = Observation(registry, {}, clock=self.app.clock, exact=frozenset({"/announce"}))
        resource = observed(with_stats(self.app.http.resource(), store), self.observation)
        site = make_site(resource, reactor=self.app.clock, access_log=False)
        self.lean = lean_announces(site, self.app.http, self.observation.requests).lean_announces if lean else None
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 40000))
        self.channel = site.buildProtocol(IPv4Address("TCP", "10.1.2.3", 40000))
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes, step: int = 0) -> bytes:
        """Feed ``data`` (in pieces of ``step`` bytes, or at once); what was answered, Date headers blanked."""
        for i in range(0, len(data), step or len(data) or 1):
            self.channel.dataReceived(data[i : i + (step or len(data))])
        out = self.transport.value()
        self.transport.clear()
        return _DATE.sub(b"\r\nDate: -\r\n", out)

    def close(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))

    @property
    def answered(self) -> int:
        return 0 if self.lean is None else self.lean.answered


#: A conversation on one keep-alive connection: what the lean path answers and what it hands on.
KEPT_ALIVE = [
    post(GOOD),
    post(announce_doc(peer(2))),
    b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n",
    post(announce_doc(peer(3, complete=True))),
    post(b"not json"),
    post(b"x" * (MAX_ANNOUNCE_BODY + 1)),
    chunked(announce_doc(peer(4))),
    post(announce_doc(peer(5)), b"Expect: 100-continue\r\n"),
    b"GET /announce HTTP/1.1\r\nHost: t\r\n\r\n",
    post(announce_doc(peer(6)), target=b"/announce?x=1"),
    post(announce_doc(peer(7)), b"User-Agent: agent\r\nAccept-Encoding: gzip\r\nConnection: keep-alive\r\n"),
    post(announce_doc(peer(8))).replace(b"Content-Length", b"content-LENGTH"),
    b"GET /stats HTTP/1.1\r\nHost: t\r\n\r\n",
    post({**GOOD, "port": 0}),
    post(GOOD),
]
#: The announces of KEPT_ALIVE the lean path answers itself.
LEAN = 6
#: Conversations twisted.web answers (some ending with the connection closed: the client's wish, a bad request).
ODD = [
    [post(GOOD), post(announce_doc(peer(2)), b"Connection: close\r\n")],
    [post(GOOD, version=b"HTTP/1.0")],
    [post(GOOD, b"Content-Length: 5\r\n")],
    [post(GOOD, b"X-Folded: a\r\n b\r\n")],
    [post(GOOD, b"Bad Name: x\r\n")],
    [b"\x16\x03\x01\x02\x00" + b"\x00" * 40],
]


@pytest.mark.parametrize("step", [0, 1, 7, 100])
def test_a_keep_alive_conversation_is_answered_as_twisted_web_answers_it(step: int) -> None:
    twisted, lean = Conn(False), Conn(True)
    for request in KEPT_ALIVE:
        assert lean.send(request, step) == twisted.send(request, step), request
    assert lean.answered == LEAN
    assert lean.observation.requests.counts == twisted.observation.requests.counts
    assert lean.app.http.handouts == twisted.app.http.handouts
    assert lean.app.store.live("ab" * 32, 100, 1000.0) == twisted.app.store.live("ab" * 32, 100, 1000.0)
    assert lean.transport.connected and twisted.transport.connected
    lean.close()
    twisted.close()


def test_pipelined_requests_are_answered_in_order() -> None:
    twisted, lean = Conn(False), Conn(True)
    everything = b"".join(KEPT_ALIVE)
    answers = lean.send(everything)
    assert answers == twisted.send(everything)
    # twisted.web reads on from the first request it is handed, until it is idle between two requests.
    assert LEAN >= lean.answered >= 2
    lean.close()
    twisted.close()


@pytest.mark.parametrize("conversation", ODD)
def test_odd_requests_are_twisted_webs(conversation: list[bytes]) -> None:
    twisted, lean = Conn(False), Conn(True)
    for request in conversation:
        assert lean.send(request) == twisted.send(request)
    assert lean.transport.disconnecting is twisted.transport.disconnecting
    assert lean.answered == (conversation[0] == post(GOOD))
    assert lean.observation.requests.counts == twisted.observation.requests.counts
    lean.close()
    twisted.close()


def test_the_lean_path_takes_over_again_once_twisted_web_is_done() -> None:
    conn = Conn(True)
    assert conn.send(b"GET /health HTTP/1.1\r\nHost: t\r\n") == b""  # twisted.web holds half a request
    assert conn.send(b"\r\n").endswith(b"OK\n\r\n0\r\n\r\n")
    assert b"200 OK" in conn.send(post(GOOD)) and conn.answered == 1
    assert b"400 Bad Request" in conn.send(post(b"[]")) and conn.answered == 1
    assert b"200 OK" in conn.send(post(GOOD)) and conn.answered == 2
    conn.close()


def test_a_waiting_store_holds_what_follows_until_the_answer_is_written() -> None:
    store = HeldStore()
    conn = Conn(True, store)
    assert conn.send(post(GOOD) + b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n") == b""
    assert conn.send(post(announce_doc(peer(2)))) == b""
    store.pending[0].callback(None)  # update
    store.pending[1].callback([peer(9)])  # peers
    out = conn.send(b"")
    first, health = out.split(b"\r\n\r\n")[1], out.split(b"HTTP/1.1")[2]
    assert json.loads(first.split(b"\n")[0]) == {"peers": [ORIGIN.to_json(), peer(9).to_json()], "interval": 3.0}
    assert b"OK\n" in health
    assert len(store.pending) == 3, "the announce after /health is being answered"
    store.pending[2].callback(None)
    store.pending[3].callback([])
    assert json.loads(conn.send(b"").split(b"\r\n\r\n")[1]) == {"peers": [ORIGIN.to_json()], "interval": 3.0}
    assert conn.answered >= 1
    conn.close()


def assert_500(conn: Conn, out: bytes) -> None:
    assert out.startswith(b"HTTP/1.1 500 Internal Server Error\r\n") and out.endswith(b'{"error":"internal error"}\n')
    assert b"Content-Type: application/json\r\nContent-Length: 27\r\n" in out
    assert conn.observation.requests.counts == {("/announce", b"POST", 5): 1}


def test_a_late_failure_is_a_logged_500() -> None:
    store = HeldStore()
    conn = Conn(True, store)
    conn.send(post(GOOD))
    with capturedLogs() as events:
        store.pending[0].errback(RuntimeError("store down"))
    assert_500(conn, conn.send(b""))
    [failure] = [e["log_failure"] for e in events if "log_failure" in e]
    assert failure.check(RuntimeError)
    conn.close()


def test_a_failure_at_once_is_a_500_too() -> None:
    store = HeldStore()
    store.update = lambda *a: fail(RuntimeError("store down"))  # type: ignore[method-assign]
    conn = Conn(True, store)
    with capturedLogs():
        assert b"500 Internal Server Error" in conn.send(post(GOOD))
    conn.close()


def test_a_client_gone_while_waiting_cancels_the_work_and_nothing_is_written() -> None:
    store = HeldStore()
    conn = Conn(True, store)
    conn.send(post(GOOD))
    with capturedLogs() as events:
        conn.close()
    assert store.cancelled == 1
    assert conn.transport.value() == b""
    assert [e for e in events if "log_failure" in e] == []


@pytest.mark.parametrize(
    ("head", "length"),
    [
        (b"POST /announce HTTP/1.1\r\nContent-Length: 12", 12),
        (b"POST /announce HTTP/1.1\r\nHost: a\r\ncontent-length:12 ", 12),
        (b"POST /announce HTTP/1.1\r\nConnection: Keep-Alive\r\nContent-Length: 1", 1),
        (b"POST /announce HTTP/1.1", None),
        (b"POST /announce HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1", None),
        (b"POST /announce HTTP/1.1\r\nContent-Length: 1\r\nConnection: close", None),
        (b"POST /announce HTTP/1.1\r\nContent-Length: 1\r\nConnection: upgrade", None),
        (b"POST /announce HTTP/1.1\r\nContent-Length: -1", None),
        (b"POST /announce HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: identity", None),
        (b"POST /announce HTTP/1.1\r\nContent-Length: 1\r\nX: a\x00b", None),
        (b"POST /announce HTTP/1.1\r\nContent-Length: %d" % (MAX_ANNOUNCE_BODY + 1), None),
        (b"POST /Announce HTTP/1.1\r\nContent-Length: 1", None),
        (b"POST /announce HTTP/1.1\r\nX: " + b"a" * 16384 + b"\r\nContent-Length: 1", None),
    ],
)
def test_which_heads_are_the_lean_paths(head: bytes, length: int | None) -> None:
    assert body_length(head) == length


@pytest.mark.parametrize(("access_log", "lean"), [(False, True), (True, False)])
def test_the_tracker_uses_the_lean_path_unless_its_access_log_is_on(access_log: bool, lean: bool) -> None:
    reactor = MemoryReactorClock()
    top = tracker_service(TrackerConfig(access_log=access_log), reactor)
    try:
        top.privilegedStartService()
        top.startService()
        [(_port, factory, _backlog, _interface)] = reactor.tcpServers
        assert (factory.protocol is LeanChannel) is lean
    finally:
        top.stopService()


def test_an_error_of_the_memory_store_is_a_logged_500_on_both_paths() -> None:
    for lean in (True, False):
        conn = Conn(lean)

        def broken(*args: object) -> None:
            raise RuntimeError("store broken")

        conn.app.store.record = broken  # type: ignore[method-assign]
        with capturedLogs() as events:
            out = conn.send(post(GOOD))
        assert_500(conn, out)
        [failure] = [e["log_failure"] for e in events if "log_failure" in e]
        assert failure.check(RuntimeError)
        conn.close()


def test_an_origin_lookup_that_waits_is_answered_when_it_is_in() -> None:
    conn = Conn(True)
    conn.app.origin.peers_hold = True
    assert conn.send(post(GOOD)) == b""
    conn.app.origin.release()
    assert json.loads(conn.send(b"").split(b"\r\n\r\n")[1]) == {"peers": [ORIGIN.to_json()], "interval": 3.0}
    assert b"200 OK" in conn.send(post(announce_doc(peer(2)))), "cached now: answered at once"
    assert conn.answered == 2
    conn.close()


def test_a_head_is_judged_the_same_the_second_time() -> None:
    heads = [
        b"POST /announce HTTP/1.1\r\nContent-Length: 12",
        b"POST /announce HTTP/1.1\r\nExpect: x\r\nContent-Length: 1",
    ]
    for _ in range(2):
        assert [body_length(h) for h in heads] == [12, None]


@pytest.mark.parametrize("closing", [post(GOOD, version=b"HTTP/1.0"), post(GOOD, b"Connection: close\r\n")])
def test_nothing_is_answered_after_twisted_web_closed_the_connection(closing: bytes) -> None:
    conn = Conn(True)
    assert b"200 OK" in conn.send(closing) and conn.transport.disconnecting
    assert conn.send(post(GOOD)) == b"" and conn.answered == 0
    conn.close()
