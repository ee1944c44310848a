"""The live swarm page's data: announces with a ``progress`` object (checked strictly, kept with the peer, gone
with it) and the routes under /swarms, through StubTreq on a task.Clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tracker_fakes import BASE, App, announce_doc, blob, peer, pid
from treq.testing import StubTreq

from kraken.tracker.progress import MAX_SOURCES
from kraken.tracker.swarmview import swarm_route, with_swarms

INFO_HASH = "cd" * 32
DIGEST = blob("swarm")[0]
ORIGIN = pid(0xABCDEF)


def progress(have: int = 2, pieces: int = 4, **over: Any) -> dict[str, Any]:
    doc = {
        "have": have, "pieces": pieces, "bytes_in": 200, "bytes_out": 100, "rate_in": 50.0, "rate_out": 25,
        "sources": [{"peer_id": ORIGIN, "origin": True, "bytes": 150, "rate": 40.0},
                    {"peer_id": pid(7), "origin": False, "bytes": 50, "rate": 10.0}],
    }  # fmt: skip
    return {**doc, **over}


class Page(App):
    """The tracker's resource with the swarm page in front, as tap.py composes it."""

    def __init__(self) -> None:
        super().__init__()
        self.stub = StubTreq(with_swarms(self.http.resource(), self.store, clock=self.clock, fresh=7.0))

    def announce_with(self, n: int, prog: Any, *, complete: bool = False) -> tuple[int, Any]:
        doc = announce_doc(peer(n, complete=complete), INFO_HASH, DIGEST)
        if prog is not None:
            doc["progress"] = prog
        return self.announce(doc)


@pytest.fixture
def page() -> Page:
    return Page()


def test_a_swarm_shows_each_peers_progress_rates_and_sources(page: Page) -> None:
    assert page.announce_with(1, progress())[0] == 200
    assert page.announce_with(2, progress(have=4, rate_in=0.0), complete=True)[0] == 200
    code, doc = page.json("GET", f"/swarms/{DIGEST}.json")
    assert code == 200
    assert (doc["digest"], doc["info_hash"], doc["peer_count"], doc["complete"]) == (str(DIGEST), INFO_HASH, 2, 1)
    first, second = doc["peers"]  # the most recently seen first
    assert (first["peer_id"], first["progress"], first["complete"]) == (pid(2), 100.0, True)
    assert (second["peer_id"], second["progress"], second["kind"]) == (pid(1), 50.0, "agent")
    assert (second["rate_in"], second["rate_out"], second["bytes_in"], second["bytes_out"]) == (50.0, 25, 200, 100)
    assert second["sources"][0] == {"peer_id": ORIGIN, "origin": True, "bytes": 150, "rate": 40.0}
    assert doc["origins"] == [{"peer_id": ORIGIN, "bytes_out": 300, "rate_out": 80.0}]
    assert (doc["rate_in"], doc["rate_out"]) == (50.0, 50.0)
    # The same swarm by its info hash.
    assert page.json("GET", f"/swarms/{INFO_HASH}.json")[1]["peers"] == doc["peers"]


def test_the_latest_progress_replaces_the_previous_and_stale_rates_are_not_summed(page: Page) -> None:
    page.announce_with(1, progress(have=1))
    page.clock.advance(5)
    page.announce_with(2, progress(have=3))
    page.clock.advance(5)  # peer 1's report is 10 s old now: past ``fresh`` (7 s)
    _, doc = page.json("GET", f"/swarms/{DIGEST}.json")
    assert [p["have"] for p in doc["peers"]] == [3, 1]
    assert doc["rate_in"] == 50.0 and doc["origins"][0]["rate_out"] == 40.0
    page.announce_with(1, progress(have=4))
    _, doc = page.json("GET", f"/swarms/{DIGEST}.json")
    assert [p["have"] for p in doc["peers"]] == [4, 3]


def test_progress_expires_with_its_peer(page: Page) -> None:
    page.announce_with(1, progress())
    page.clock.advance(31)  # the store's ttl is 30 s
    _, doc = page.json("GET", f"/swarms/{DIGEST}.json")
    assert doc["peers"] == [] and doc["peer_count"] == 0
    assert page.json("GET", "/swarms.json")[1]["swarms"] == []
    page.store.expire(page.clock.seconds())
    code, doc = page.json("GET", f"/swarms/{DIGEST}.json")
    assert code == 404 and "no swarm" in doc["error"]


def test_an_announce_without_progress_still_works_and_shows_by_info_hash(page: Page) -> None:
    assert page.announce_with(1, None)[0] == 200
    assert page.json("GET", f"/swarms/{DIGEST}.json")[0] == 404  # only an announce with progress names it
    code, doc = page.json("GET", f"/swarms/{INFO_HASH}.json")
    assert code == 200 and doc["digest"] is None
    assert doc["peers"][0]["progress"] is None and "rate_in" not in doc["peers"][0]


def test_the_index_lists_active_swarms(page: Page) -> None:
    page.announce_with(1, progress(have=1, pieces=4))
    page.announce_with(2, progress(have=3, pieces=4))
    code, doc = page.json("GET", "/swarms.json")
    assert code == 200
    assert doc["swarms"] == [
        {"digest": str(DIGEST), "info_hash": INFO_HASH, "peers": 2, "complete": 0, "progress": 50.0}
    ]
    assert (doc["shown"], doc["count"]) == (1, 1)


BAD = [
    ("[]", "progress must be a JSON object"),
    ({"have": 1}, "progress lacks"),
    ({**progress(), "extra": 1}, "unknown keys extra"),
    (progress(have=5), "have must not exceed"),
    (progress(have=-1), "progress.have must be an integer"),
    (progress(have=True), "progress.have must be an integer"),
    (progress(pieces=1.0), "progress.pieces must be an integer"),
    (progress(bytes_in="1"), "progress.bytes_in must be an integer"),
    (progress(rate_in=-1.0), "progress.rate_in must be a number"),
    (progress(rate_out=1e300), "progress.rate_out must be a number"),
    (progress(sources={}), "progress.sources must be a list"),
    (progress(sources=[{"peer_id": ORIGIN, "origin": True, "bytes": 1, "rate": 0}] * (MAX_SOURCES + 1)), "at most"),
    (progress(sources=[{"peer_id": "<script>", "origin": True, "bytes": 1, "rate": 0}]), "peer_id must be 40"),
    (progress(sources=[{"peer_id": ORIGIN.upper(), "origin": True, "bytes": 1, "rate": 0}]), "peer_id must be 40"),
    (progress(sources=[{"peer_id": ORIGIN, "origin": 1, "bytes": 1, "rate": 0}]), "origin must be true or false"),
    (progress(sources=[{"peer_id": ORIGIN, "origin": True, "bytes": -1, "rate": 0}]), "bytes must be an integer"),
    (progress(sources=[{"peer_id": ORIGIN, "origin": True, "bytes": 1}]), "sources[0] lacks rate"),
    (progress(sources=["x"]), "sources[0] must be a JSON object"),
]


@pytest.mark.parametrize(("prog", "why"), BAD)
def test_a_malformed_progress_is_refused_with_400(page: Page, prog: Any, why: str) -> None:
    code, doc = page.announce_with(1, json.loads(prog) if isinstance(prog, str) else prog)
    assert code == 400 and why in doc["error"], doc
    assert page.json("GET", f"/swarms/{INFO_HASH}.json")[0] == 404  # nothing recorded


def test_nan_and_infinity_are_refused(page: Page) -> None:
    doc = announce_doc(peer(1), INFO_HASH, DIGEST)
    for value in ("NaN", "Infinity"):
        body = json.dumps({**doc, "progress": progress(rate_in=0.5)}).replace("0.5", value).encode()
        code, answer = page.json("POST", "/announce", data=body)
        assert code == 400 and "rate_in" in answer["error"]


def test_the_pages_are_static_html_with_a_strict_policy(page: Page) -> None:
    for path in ("/swarms", "/swarms/", f"/swarms/{DIGEST}", f"/swarms/{INFO_HASH}"):
        code, body = page.request("GET", path)
        assert code == 200 and body.startswith(b"<!DOCTYPE html>") and b'src="/swarms.js"' in body, path
    response = page.run(page.stub.get(BASE + "/swarms.js"))
    assert response.headers.getRawHeaders(b"Content-Type") == [b"text/javascript; charset=utf-8"]
    csp = response.headers.getRawHeaders(b"Content-Security-Policy")[0]
    assert b"script-src 'self'" in csp and b"default-src 'none'" in csp
    assert b"innerHTML" not in page.request("GET", "/swarms.js")[1]
    response = page.run(page.stub.get(BASE + "/swarms.css"))
    assert response.headers.getRawHeaders(b"Content-Type") == [b"text/css; charset=utf-8"]


@pytest.mark.parametrize(
    "path", ["/swarms/<script>", "/swarms/sha256:abc.json", "/swarms/%3Cb%3E.json", "/swarms/" + "AB" * 32]
)
def test_a_bad_swarm_key_is_400(page: Page, path: str) -> None:
    code, doc = page.json("GET", path)
    assert code == 400 and "digest or its info hash" in doc["error"]


def test_other_methods_and_paths(page: Page) -> None:
    assert page.json("POST", "/swarms.json")[0] == 405
    assert page.json("GET", f"/swarms/{DIGEST}/x")[0] == 404
    assert page.request("GET", "/health") == (200, b"OK\n")  # the rest of the API is untouched


def test_route_labels_are_bounded() -> None:
    assert swarm_route(b"/swarms/") == "/swarms"
    assert swarm_route(f"/swarms/{DIGEST}.json".encode()) == "/swarms/<key>.json"
    assert swarm_route(f"/swarms/{DIGEST}".encode()) == "/swarms/<key>"
    assert swarm_route(b"/announce") is None
