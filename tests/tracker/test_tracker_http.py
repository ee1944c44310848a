"""TrackerHTTP through StubTreq, with a fake origin."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tracker_fakes import NAMESPACE, App, announce_doc, blob, peer, pid, result_of
from twisted.internet.defer import Deferred

from kraken.core import MetaInfo
from kraken.core.peer import PeerInfo
from kraken.net import HTTPStatusError
from kraken.tracker.http import MAX_ANNOUNCE_BODY


@pytest.fixture
def app() -> App:
    return App(origin_peers=[peer(200, complete=True, origin=True)])


def metainfo_path(digest: Any, ns: str = NAMESPACE) -> str:
    return f"/namespace/{ns}/blobs/{digest}/metainfo"


def test_health(app: App) -> None:
    assert app.request("GET", "/health") == (200, b"OK\n")


def test_unknown_route_and_method_are_json(app: App) -> None:
    code, doc = app.json("GET", "/nope")
    assert code == 404 and "error" in doc
    code, doc = app.json("GET", "/announce")
    assert code == 405 and "error" in doc


def test_announce_records_and_hands_out(app: App) -> None:
    seeder, other, me = peer(1, complete=True), peer(2), peer(3)
    for p in (seeder, other):
        assert app.announce(announce_doc(p))[0] == 200
    code, doc = app.announce(announce_doc(me))
    assert code == 200
    assert doc["interval"] == 3.0
    assert doc["peers"] == [
        peer(200, complete=True, origin=True).to_json(),
        seeder.to_json(),
        other.to_json(),
    ]
    # The requester is now known to the others.
    _, doc = app.announce(announce_doc(other))
    assert me.to_json() in doc["peers"]
    assert other.to_json() not in doc["peers"]


def test_a_completed_peer_gets_no_peers_but_is_handed_out(app: App) -> None:
    app.announce(announce_doc(peer(2)))
    code, doc = app.announce(announce_doc(peer(1, complete=True)))
    assert (code, doc["peers"]) == (200, [])
    _, doc = app.announce(announce_doc(peer(2)))
    assert doc["peers"][1] == peer(1, complete=True).to_json(), "right after the origin"


def test_peers_are_per_info_hash_and_expire(app: App) -> None:
    app.announce(announce_doc(peer(1), info_hash="cd" * 32))
    _, doc = app.announce(announce_doc(peer(2)))
    assert [p["origin"] for p in doc["peers"]] == [True]
    app.announce(announce_doc(peer(1)))
    app.clock.advance(31)  # past the 30 s ttl
    _, doc = app.announce(announce_doc(peer(2)))
    assert [p["peer_id"] for p in doc["peers"]] == [peer(200).peer_id]


def test_origins_are_handed_out_only_for_blobs_they_hold(app: App) -> None:
    held, absent = blob("held")[0], blob("absent")[0]
    app.origin.seeds[absent] = []
    _, doc = app.announce(announce_doc(peer(1), info_hash="cd" * 32, digest=held))
    assert doc["peers"] == [peer(200, complete=True, origin=True).to_json()]
    _, doc = app.announce(announce_doc(peer(1), info_hash="ef" * 32, digest=absent))
    assert doc["peers"] == []
    assert app.origin.peer_calls == [held, absent]


def test_origin_lookups_are_cached_and_skipped_for_seeders(app: App) -> None:
    digest = blob("x")[0]
    app.announce(announce_doc(peer(1, complete=True), digest=digest))
    assert app.origin.peer_calls == [], "a completed agent gets no peers, so no lookup"
    for n in range(2, 5):
        app.announce(announce_doc(peer(n), digest=digest))
    assert app.origin.peer_calls == [digest]
    app.clock.advance(10)  # the origin peers' ttl
    app.announce(announce_doc(peer(2), digest=digest))
    assert app.origin.peer_calls == [digest, digest]


def test_announces_work_while_the_origin_fails(app: App) -> None:
    app.origin.peers_error = HTTPStatusError("GET", "http://origin/blobs/x/peers", 503, b"down")
    app.announce(announce_doc(peer(1, complete=True)))
    code, doc = app.announce(announce_doc(peer(2)))
    assert (code, doc["peers"]) == (200, [peer(1, complete=True).to_json()])
    app.origin.peers_error = None
    app.clock.advance(1)  # failures are remembered for a second
    _, doc = app.announce(announce_doc(peer(2)))
    assert peer(200, complete=True, origin=True).to_json() in doc["peers"]


def test_a_slow_origin_delays_an_announce_by_the_wait_only(app: App) -> None:
    app.origin.peers_hold = True
    done: list[Any] = []
    Deferred.fromCoroutine(app.announce_async(GOOD)).addBoth(done.append)
    app.pump()
    assert done == []
    app.clock.advance(2)  # OriginPeers' wait
    app.pump()
    assert done == [(200, {"peers": [], "interval": 3.0})]
    app.origin.release()
    _, doc = app.announce(GOOD)
    assert doc["peers"] == [peer(200, complete=True, origin=True).to_json()]
    assert len(app.origin.peer_calls) == 1


def test_handout_is_capped() -> None:
    app = App(max_peers=3)
    for n in range(10):
        app.announce(announce_doc(peer(n)))
    _, doc = app.announce(announce_doc(peer(0)))
    assert len(doc["peers"]) == 3
    assert peer(0).to_json() not in doc["peers"]


GOOD = announce_doc(peer(1))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"peer_id": "A" * 40}, "peer id"),
        ({"peer_id": "a" * 41}, "peer id"),
        ({"ip": "host.example"}, "IP address"),
        ({"port": 0}, "port"),
        ({"port": "80"}, "port"),
        ({"complete": "yes"}, "complete"),
        ({"namespace": "UPPER/case"}, "namespace"),
        ({"namespace": 5}, "namespace"),
        ({"digest": "sha256:xyz"}, "digest"),
        ({"digest": 5}, "digest"),
        ({"info_hash": "ab" * 20}, "info_hash"),
        ({"info_hash": None}, "info_hash"),
        ({"origin": True}, "unknown keys origin"),
        ({"ip": None}, "ip must be text"),
        ({"ip": "[::1]"}, "not an IP address"),
        ({"ip": "fe80::1%eth0"}, "IPv6 zone ids ('%eth0') are not supported"),
    ],
)
def test_announce_validation(app: App, change: dict[str, Any], message: str) -> None:
    code, doc = app.announce({**GOOD, **change})
    assert code == 400
    assert message in doc["error"]
    assert len(app.store) == 0


def test_ipv6_peers_are_announced_and_handed_out(app: App) -> None:
    first = PeerInfo(pid(1), "2001:db8::1", 16001)
    app.announce(announce_doc(first))
    code, doc = app.announce(announce_doc(PeerInfo(pid(2), "2001:DB8:0::2", 16001)))
    assert code == 200
    assert first.to_json() in doc["peers"]
    assert first.to_json()["ip"] == "2001:db8::1"


def test_announce_missing_keys_and_bad_bodies(app: App) -> None:
    doc = dict(GOOD)
    del doc["port"], doc["ip"]
    code, answer = app.announce(doc)
    assert (code, answer["error"]) == (400, "announce is missing ip, port")
    for body in (b"not json", b"[1, 2]", b"\xff\xfe", b""):
        code, answer = app.json("POST", "/announce", data=body)
        assert code == 400, body
        assert "JSON" in answer["error"]


def test_announce_body_is_bounded(app: App) -> None:
    body = json.dumps({**GOOD, "pad": "x" * MAX_ANNOUNCE_BODY}).encode()
    code, doc = app.json("POST", "/announce", data=body)
    assert code == 413
    assert "body larger than" in doc["error"]


def test_metainfo_miss_then_hit(app: App) -> None:
    digest, info = app.origin.add("a")
    code, body = app.request("GET", metainfo_path(digest))
    assert code == 200
    assert MetaInfo.from_json(body) == info
    assert app.request("GET", metainfo_path(digest)) == (200, body)
    assert app.origin.calls == [(NAMESPACE, digest)]
    app.clock.advance(301)  # past the 5 min cache ttl
    assert app.request("GET", metainfo_path(digest)) == (200, body)
    assert len(app.origin.calls) == 2


def test_metainfo_404_is_not_cached(app: App) -> None:
    digest, info = blob("absent")
    code, doc = app.json("GET", metainfo_path(digest))
    assert code == 404
    assert str(digest) in doc["error"]
    app.origin.infos[digest] = info  # the origin has it now
    assert app.request("GET", metainfo_path(digest))[0] == 200
    assert len(app.origin.calls) == 2


def test_metainfo_concurrent_requests_share_one_fetch(app: App) -> None:
    digest, info = app.origin.add("b")
    app.origin.hold = True

    async def get() -> tuple[int, bytes]:
        import treq

        response = await app.stub.get("http://tracker.test" + metainfo_path(digest))
        return response.code, await treq.content(response)

    answers = [Deferred.fromCoroutine(get()) for _ in range(3)]
    app.stub.flush()
    assert len(app.origin.calls) == 1
    assert not any(d.called for d in answers)
    app.origin.release()
    results = [result_of(d, app.pump) for d in answers]
    assert {code for code, _ in results} == {200}
    assert all(MetaInfo.from_json(body) == info for _, body in results)
    assert app.http.metainfo_cache.fetches == 1


def test_metainfo_a_cancelled_waiter_does_not_disturb_the_others(app: App) -> None:
    digest, info = app.origin.add("c")
    app.origin.hold = True
    cache = app.http.metainfo_cache
    first, second = cache.get(NAMESPACE, digest), cache.get(NAMESPACE, digest)
    first.cancel()
    app.origin.release()
    assert result_of(second) == info
    assert result_of(cache.get(NAMESPACE, digest)) == info  # cached now
    assert cache.fetches == 1


def test_metainfo_cache_is_bounded(app: App) -> None:
    digests = [app.origin.add(s)[0] for s in "xyz"]
    for d in digests:
        assert app.request("GET", metainfo_path(d))[0] == 200
    assert len(app.http.metainfo_cache) == 2  # metainfo_cache_size
    app.request("GET", metainfo_path(digests[0]))  # evicted: fetched again
    assert len(app.origin.calls) == 4


def test_metainfo_origin_failure_is_502(app: App) -> None:
    digest, _ = app.origin.add("d")
    app.origin.error = HTTPStatusError("GET", "http://origin", 500, b"broken")
    code, doc = app.json("GET", metainfo_path(digest))
    assert code == 502
    assert "origin failed" in doc["error"]
    app.origin.error = None
    assert app.request("GET", metainfo_path(digest))[0] == 200  # failures are not cached


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/namespace/library/alpine/blobs/sha256:nothex/metainfo", "invalid digest"),
        ("/namespace/UP/blobs/sha256:" + "a" * 64 + "/metainfo", "invalid namespace"),
    ],
)
def test_metainfo_bad_requests(app: App, path: str, message: str) -> None:
    code, doc = app.json("GET", path)
    assert code == 400
    assert message in doc["error"]
    assert app.origin.calls == []
