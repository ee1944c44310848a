"""The tracker's memos on the announce path: parsed peers by their announced fields, answers' JSON by peer."""

from __future__ import annotations

import json

import pytest
from tracker_fakes import announce_doc, peer

from kraken.core.peer import PeerInfo
from kraken.net.server import HTTPError
from kraken.tracker import http
from kraken.tracker.handout import AnswerEncoder
from kraken.tracker.http import parse_announce

GOOD = announce_doc(peer(1))


def body(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def test_a_reannounce_gets_the_same_peer_and_a_changed_one_a_new_one() -> None:
    first = parse_announce(body()).peer
    assert parse_announce(body()).peer is first
    assert parse_announce(body(complete=True)).peer == PeerInfo(first.peer_id, first.ip, first.port, complete=True)
    assert parse_announce(body(ip="::FFFF:10.0.0.1")).peer.ip == PeerInfo("a" * 40, "::ffff:10.0.0.1", 1).ip


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"port": True}, "port must be an integer in 1-65535, not True"),
        ({"port": 16001.0}, "port must be an integer in 1-65535, not 16001.0"),
        ({"complete": 0}, "complete must be true or false, not 0"),
        ({"ip": 10}, "ip must be text, not int"),
    ],
)
def test_fields_equal_to_a_remembered_peer_but_of_another_type_are_refused(
    changes: dict[str, object], message: str
) -> None:
    parse_announce(body(port=1, complete=False))  # remembered: (id, ip, 1, False)
    parse_announce(body())
    with pytest.raises(HTTPError, match=message.replace(".", r"\.")):
        parse_announce(body(**{"port": 1, **changes}))


def test_the_peer_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "PEER_MEMO_SIZE", 3)
    monkeypatch.setattr(http, "_PEERS", {})
    for n in range(10):
        assert parse_announce(json.dumps(announce_doc(peer(n))).encode()).peer == peer(n)
        assert len(http._PEERS) <= 3


def test_the_identity_memo_is_bounded_and_answers_stay_right() -> None:
    encoder = AnswerEncoder(3.0, size=2)
    peers = [peer(n) for n in range(5)]
    for _ in range(3):
        assert json.loads(encoder.encode(peers))["peers"] == [p.to_json() for p in peers]
    assert len(encoder._by_id) <= 2


def test_a_body_sent_again_is_not_parsed_again_and_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "BODY_MEMO_SIZE", 3)
    monkeypatch.setattr(http, "_BODIES", {})
    first = parse_announce(body())
    assert parse_announce(body()) is first
    for n in range(10):
        assert parse_announce(json.dumps(announce_doc(peer(n))).encode()).peer == peer(n)
        assert len(http._BODIES) <= 3


def test_bodies_with_reports_progress_or_padding_are_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "_BODIES", {})
    progress = {"have": 1, "pieces": 2, "bytes_in": 3, "bytes_out": 0, "rate_in": 1.0, "rate_out": 0.0, "sources": []}
    for doc in (body(unreachable=["b" * 40]), body(progress=progress), body() + b" " * 1024):
        assert http.parse_announce_and_progress(doc)[0].peer == peer(1)
    assert http._BODIES == {}
