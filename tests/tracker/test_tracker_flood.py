"""Made-up peers and reports of unreachable peers, through POST /announce from several client addresses."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

import pytest
from tracker_fakes import App, announce_doc, peer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import capturedLogs
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from kraken.core.peer import PeerInfo
from kraken.tracker.http import MAX_ANNOUNCE_BODY, MAX_UNREACHABLE, parse_announce

ORIGINS = [peer(200, complete=True, origin=True), peer(201, complete=True, origin=True)]
HONEST = "127.0.0.1"
ATTACKER = "127.0.0.2"
# Six agents on one host: two done, four downloading.
AGENTS = [peer(n, complete=n < 2) for n in range(6)]


def fake(n: int) -> PeerInfo:
    """A made-up completed peer: a closed port on the loopback."""
    return PeerInfo(f"{0xFA4E0000 + n:040x}", "127.0.0.1", 40000 + n, complete=True)


FAKES = [fake(n) for n in range(60)]


class Tracker(App):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(origin_peers=ORIGINS, ttl=3600.0, **kwargs)

    def post(self, doc: dict[str, Any], client: str = HONEST) -> tuple[int, Any]:
        body = json.dumps(doc).encode()
        request = DummyRequest([b"announce"])
        request.method = b"POST"
        request.path = b"/announce"
        request.content = BytesIO(body)
        request.requestHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
        request.client = (IPv6Address if ":" in client else IPv4Address)("TCP", client, 40000)
        rendered = self.http.announce_resource.render(request)
        assert rendered is not NOT_DONE_YET
        return request.responseCode or 200, json.loads(rendered)

    def peers_for(self, p: PeerInfo, client: str = HONEST, **extra: Any) -> list[PeerInfo]:
        code, doc = self.post({**announce_doc(p), **extra}, client)
        assert code == 200, doc
        return [PeerInfo.from_json(d) for d in doc["peers"]]


@pytest.fixture
def flooded() -> Tracker:
    t = Tracker()
    for p in AGENTS:
        t.peers_for(p)
    for f in FAKES:
        assert t.post(announce_doc(f), ATTACKER)[0] == 200
    return t


def test_a_flood_of_made_up_completed_peers_leaves_the_origins_and_the_agents_in_every_answer(
    flooded: Tracker,
) -> None:
    downloading = [p for p in AGENTS if not p.complete]
    for _ in range(20):
        for me in downloading:
            got = flooded.peers_for(me)
            assert len(got) == 50
            assert set(got[:2]) == set(ORIGINS), "the origins first, always"
            others = [p for p in AGENTS if p != me]
            assert set(others) <= set(got), "every other agent of the host"
            # The two addresses take turns, round by round: the host's six agents (the requester among
            # them, left out afterwards) come in the first six rounds, the first twelve after the origins.
            assert set(others) <= set(got[2:14])
            assert {p.peer_id for p in got[2:]} - {p.peer_id for p in others} <= {f.peer_id for f in FAKES}
        flooded.clock.advance(3)


def test_an_answer_has_no_more_made_up_peers_than_the_other_addresses_leave_room_for() -> None:
    t = Tracker()
    hosts = [f"10.0.{n // 250}.{n % 250 + 1}" for n in range(60)]
    for n, host in enumerate(hosts):  # 60 hosts, one agent each (a real cluster)
        t.peers_for(peer(n, complete=n % 3 == 0), host)
    for f in FAKES * 3:
        t.post(announce_doc(f), ATTACKER)
    got = t.peers_for(peer(999), "10.9.9.9")
    assert set(got[:2]) == set(ORIGINS)
    assert sum(p.peer_id in {f.peer_id for f in FAKES} for p in got) <= 1, "one address, one peer"


def test_reported_peers_are_hidden_and_origins_never_are(flooded: Tracker) -> None:
    me = AGENTS[5]
    ids = [f.peer_id for f in FAKES]
    origin_ids = [o.peer_id for o in ORIGINS]
    with capturedLogs() as events:
        got = flooded.peers_for(me, unreachable=ids[:48] + origin_ids)
    assert set(got[:2]) == set(ORIGINS), "reports cannot hide an origin"
    hidden = {e["peer"] for e in events if "reported unreachable" in e.get("log_format", "")}
    assert hidden == set(ids[:48]), "one line per peer hidden; none for the origins"
    got = flooded.peers_for(AGENTS[4])
    assert {p.peer_id for p in got} & set(ids[:48]) == set()
    assert set(AGENTS) - {AGENTS[4]} <= set(got)
    assert len(got) == 2 + 5 + 12, "the origins, the other agents, the fakes nobody reported"
    flooded.peers_for(me, unreachable=ids[48:])
    assert set(flooded.peers_for(AGENTS[4])) == set(ORIGINS) | set(AGENTS) - {AGENTS[4]}
    # One address reported them: after unreachable_hold (60 s) they are back, and its reports
    # cannot hide them again until 120 s after the first.
    flooded.clock.advance(60)
    assert len(flooded.peers_for(AGENTS[4])) == 50
    flooded.peers_for(me, unreachable=ids[:50])
    assert len(flooded.peers_for(AGENTS[4])) == 50
    flooded.clock.advance(60)
    flooded.peers_for(me, unreachable=ids[:50])
    assert {p.peer_id for p in flooded.peers_for(AGENTS[4])} & set(ids[:50]) == set()


def test_reports_from_two_addresses_keep_peers_hidden(flooded: Tracker) -> None:
    ids = [f.peer_id for f in FAKES[:10]]
    flooded.peers_for(AGENTS[5], unreachable=ids)
    flooded.peers_for(peer(50), "10.1.1.1", unreachable=ids)
    for _ in range(10):  # both keep reporting every 30 s: hidden all along
        flooded.clock.advance(30)
        got = flooded.peers_for(AGENTS[4], unreachable=ids)
        assert {p.peer_id for p in got} & set(ids) == set()
        flooded.peers_for(peer(50), "10.1.1.1", unreachable=ids)


def test_one_liar_cannot_hide_an_agent_for_long(flooded: Tracker) -> None:
    victim = AGENTS[0]
    seen = 0
    for _ in range(400):  # the liar reports the victim every 3 s for 20 minutes
        flooded.peers_for(fake(0), ATTACKER, unreachable=[victim.peer_id])
        seen += victim in flooded.peers_for(AGENTS[5])
        flooded.clock.advance(3)
    assert seen == 200, "hidden 60 s of every 120 s: handed out half the time"


def test_the_announcer_s_own_id_and_unknown_ids_are_passed_over(flooded: Tracker) -> None:
    me = AGENTS[5]
    got = flooded.peers_for(me, unreachable=[me.peer_id, "ab" * 32, "cd" * 20])
    assert len(got) == 50
    assert me in flooded.peers_for(AGENTS[4])


GOOD = announce_doc(peer(1))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ab" * 20, "unreachable must be a list of at most 50 peer ids"),
        ({"ab" * 20: True}, "unreachable must be a list of at most 50 peer ids"),
        (None, "unreachable must be a list of at most 50 peer ids"),
        ([f"{n:040x}" for n in range(MAX_UNREACHABLE + 1)], "unreachable must be a list of at most 50 peer ids"),
        (["AB" * 20], "unreachable must hold peer ids of 40 or 64 lowercase hex characters, not 'ABAB"),
        (["ab" * 21], "unreachable must hold peer ids of 40 or 64 lowercase hex characters, not 'abab"),
        ([1], "unreachable must hold peer ids of 40 or 64 lowercase hex characters, not 1"),
        ([["ab" * 20]], "unreachable must hold peer ids of 40 or 64 lowercase hex characters, not ['abab"),
    ],
)
def test_a_malformed_unreachable_is_a_400_and_records_nothing(value: object, message: str) -> None:
    t = Tracker()
    code, doc = t.post({**GOOD, "unreachable": value})
    assert code == 400
    assert doc["error"].startswith(message)
    assert len(t.store) == 0


def test_a_good_unreachable_is_parsed() -> None:
    ids = [f"{n:040x}" for n in range(20)] + [f"{n:064x}" for n in range(30)]
    announce = parse_announce(json.dumps({**GOOD, "unreachable": ids[:45] + ids[:3]}).encode())
    assert announce.unreachable == tuple(ids[:45]), "duplicates once, in order"
    assert parse_announce(json.dumps({**GOOD, "unreachable": []}).encode()).unreachable == ()
    assert parse_announce(json.dumps(GOOD).encode()).unreachable == ()
    # 50 ids of 64 hex characters, written with json.dumps' default separators, and a long namespace fit.
    doc = {**GOOD, "peer_id": "f" * 64, "namespace": "a/" * 100 + "b", "unreachable": [f"{n:064x}" for n in range(50)]}
    body = json.dumps(doc).encode()
    assert len(body) < MAX_ANNOUNCE_BODY
    assert len(parse_announce(body).unreachable) == 50
    assert len(parse_announce(json.dumps({**GOOD, "unreachable": ids}).encode()).unreachable) == 50


def test_other_unknown_keys_are_still_refused() -> None:
    t = Tracker()
    code, doc = t.post({**GOOD, "unreachables": []})
    assert (code, doc) == (400, {"error": "announce has unknown keys unreachables"})


def test_ipv6_agents_of_one_slash_64_count_as_one_address() -> None:
    t = Tracker()
    for n in range(30):
        t.peers_for(peer(n, complete=True), f"2001:db8:0:1::{n + 1:x}")
    for n in range(30):
        t.peers_for(peer(100 + n, complete=True), f"2001:db8:0:{n + 2:x}::1")
    got = t.peers_for(peer(999), "2001:db8:ff::1")
    # Round 0 is one peer from each of the 31 addresses; the /64 of 30 agents fills the rest.
    assert sum(int(p.peer_id, 16) < 30 for p in got[2:33]) == 1
