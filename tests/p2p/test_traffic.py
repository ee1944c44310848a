"""The announce's ``progress`` (kraken.p2p.traffic): counted per torrent, reported with rates since the previous
report; and sent by a whole swarm's agents with ``p2p.announce_progress`` (tests/p2p/swarm.py)."""

from __future__ import annotations

from typing import Any

from swarm import Swarm, blob, done

from kraken.p2p.traffic import MAX_REPORTED, MAX_TRACKED, Traffic
from kraken.tracker.progress import check_progress

ORIGIN, AGENT = "a" * 40, "b" * 40


def test_a_report_counts_bytes_by_source_and_rates_since_the_previous_one() -> None:
    t = Traffic()
    first = t.report(10.0, 0, 4)
    assert first == {
        "have": 0, "pieces": 4, "bytes_in": 0, "bytes_out": 0, "rate_in": 0.0, "rate_out": 0.0, "sources": []
    }  # fmt: skip
    t.received(ORIGIN, 100, True)
    t.received(AGENT, 300, False)
    t.received(ORIGIN, 100, True)
    t.sent(50)
    second = t.report(12.0, 3, 4)
    assert (second["have"], second["bytes_in"], second["bytes_out"]) == (3, 500, 50)
    assert (second["rate_in"], second["rate_out"]) == (250.0, 25.0)
    assert second["sources"] == [
        {"peer_id": AGENT, "origin": False, "bytes": 300, "rate": 150.0},
        {"peer_id": ORIGIN, "origin": True, "bytes": 200, "rate": 100.0},
    ]
    t.received(ORIGIN, 40, True)
    third = t.report(14.0, 4, 4)
    assert third["rate_in"] == 20.0 and third["sources"][1]["rate"] == 20.0 and third["sources"][0]["rate"] == 0.0
    assert check_progress(third) is third  # what the tracker accepts


def test_sources_are_bounded() -> None:
    t = Traffic()
    for n in range(MAX_TRACKED + 10):
        t.received(f"{n:040x}", n + 1, False)
    assert len(t.sources) == MAX_TRACKED
    assert t.bytes_in == sum(range(1, MAX_TRACKED + 11))
    report = t.report(1.0, 1, 1)
    assert len(report["sources"]) == MAX_REPORTED
    assert report["sources"][0]["bytes"] == MAX_TRACKED  # the most bytes first


def test_agents_announce_their_progress_when_configured(tmp_path: Any) -> None:
    swarm = Swarm(tmp_path, announce_progress=True)
    try:
        data, info = blob(30)
        origin = swarm.origin("origin", (data, info))
        agents = [swarm.agent(f"agent{i}") for i in range(3)]
        downloads = [a.download(info.digest) for a in agents]
        swarm.run(lambda: all(map(done, downloads)))
        sent_by_agents = sum(a.scheduler.stats().bytes_out for a in agents)
        for agent in agents:
            reports = swarm.tracker.progress[agent.scheduler.peer_id]
            last = check_progress(reports[-1])
            assert (last["have"], last["pieces"], last["bytes_in"]) == (info.num_pieces, info.num_pieces, len(data))
            assert sum(s["bytes"] for s in last["sources"]) == len(data)
            assert {s["peer_id"] for s in last["sources"] if s["origin"]} <= {origin.scheduler.peer_id}
        assert sum(swarm.tracker.progress[a.scheduler.peer_id][-1]["bytes_out"] for a in agents) <= sent_by_agents
    finally:
        swarm.stop_and_settle()


def test_no_progress_is_sent_by_default(swarm: Swarm) -> None:
    data, info = blob(8)
    swarm.origin("origin", (data, info))
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    swarm.run(lambda: done(d))
    assert swarm.tracker.announces and swarm.tracker.progress == {}
