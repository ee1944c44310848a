"""The scheduler against hostile and dead peers (issue 11): tarpits, dead dials, slot holders, per-address limits
and handshakes for another namespace. Schedulers joined through iosim on one Clock (tests/p2p/swarm.py)."""

from __future__ import annotations

from swarm import HANDSHAKE_TIMEOUT, NAMESPACE, RawClient, Swarm, blob, peer_id, resolved
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import capturedLogs

from kraken.p2p import wire


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def done(d: Deferred[str]) -> bool:
    return d.called


def tarpits(swarm: Swarm, digest: object, n: int) -> dict[str, list[float]]:
    """``n`` peers handed out as complete that take the connection and never answer: peer id -> dial times."""
    dialled: dict[str, list[float]] = {}
    for i in range(n):
        times = dialled.setdefault(peer_id(f"tarpit{i}"), [])

        def build(times: list[float] = times) -> Protocol:
            times.append(swarm.clock.seconds())
            return Protocol()

        swarm.listen(f"tarpit{i}", build, origin=False, digest=digest)  # type: ignore[arg-type]
    return dialled


def test_a_tarpit_is_blacklisted_after_its_second_timeout_and_reported_unreachable(swarm):
    _, info = blob(4)
    swarm.publish(info)
    (tarpit,) = tarpits(swarm, info.digest, 1).items()
    tarpit_id, dialled = tarpit
    agent = swarm.agent("agent")
    with capturedLogs() as events:
        d = agent.download(info.digest)
        swarm.run(lambda: any(swarm.tracker.reports), limit=60)
    # The first timeout is forgiven (a saturated link loses a SYN now and then): tried again after 5 s. The second
    # blacklists it, and the next announce reports it.
    assert len(dialled) == 2 and dialled[1] - dialled[0] >= HANDSHAKE_TIMEOUT + 5.0
    reported = [r for r in swarm.tracker.reports if r]
    assert reported == [[tarpit_id]]
    assert swarm.clock.seconds() - dialled[1] < HANDSHAKE_TIMEOUT + 1.5
    unreachable = [e for e in events if e.get("log_format", "").startswith("peer {peer} at {peer_addr} unreachable")]
    assert [(e["peer"], e["seconds"]) for e in unreachable] == [(tarpit_id[:12], 30.0)]
    assert agent.scheduler.stats().peers_unreachable == 1
    # Blacklisted for the full 30 s, though the agent keeps announcing every second; reported once.
    swarm.run(lambda: swarm.clock.seconds() > dialled[1] + HANDSHAKE_TIMEOUT + 29.0)
    assert len(dialled) == 2
    assert [r for r in swarm.tracker.reports if r] == [[tarpit_id]]
    # Then tried again, and on a third timeout blacklisted twice as long.
    swarm.run(lambda: len(dialled) == 3, limit=10)
    swarm.run(lambda: len([r for r in swarm.tracker.reports if r]) == 2, limit=10)
    assert agent.scheduler.stats().peers_unreachable == 2
    swarm.run(lambda: swarm.clock.seconds() > dialled[2] + HANDSHAKE_TIMEOUT + 59.0)
    assert len(dialled) == 3 and not done(d)
    swarm.run(lambda: len(dialled) == 4, limit=10)
    d.addErrback(lambda f: None)  # fails when the swarm stops


def test_a_refused_dial_is_reported_at_once(swarm):
    data, info = blob(4)
    swarm.origin("origin", (data, info))
    dead = peer_id("dead")
    from kraken.core.peer import PeerInfo

    swarm.tracker.peers[info.digest] = {dead: PeerInfo(dead, "127.0.0.1", 1, complete=True)}  # nothing listens
    d = swarm.agent("agent").download(info.digest)
    swarm.run(lambda: done(d))
    assert read(resolved(d)) == data
    assert [r for r in swarm.tracker.reports if r] == [[dead]]


def test_dials_to_dead_peers_do_not_keep_the_agent_from_the_origin(swarm):
    data, info = blob(8)
    tarpits(swarm, info.digest, 10)  # handed out before the origin, and as many as the agent's connections
    swarm.origin("origin", (data, info))
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    took = swarm.run(lambda: done(d))
    assert read(resolved(d)) == data
    # A pending dial holds a slot for dial_hold (2 s) only: the origin was dialled long before the tarpits'
    # handshakes timed out (which is when the old budget, dials and connections together, freed up).
    assert took < HANDSHAKE_TIMEOUT
    assert agent.scheduler.stats().pieces_in_from_origins == info.num_pieces


def test_pending_dials_have_their_own_bound(tmp_path):
    swarm = Swarm(tmp_path, max_pending_dials=12)
    _, info = blob(4)
    swarm.publish(info)
    dialled = tarpits(swarm, info.digest, 30)
    swarm.agent("agent").download(info.digest).addErrback(lambda f: None)
    swarm.run(lambda: swarm.clock.seconds() >= HANDSHAKE_TIMEOUT - 0.5)
    # Ten at first (the connection budget), two more once the first ten stopped holding their slots.
    assert sum(len(times) for times in dialled.values()) == 12
    swarm.stop_and_settle()


def test_a_slot_holder_that_only_cancels_is_evicted(swarm):
    data, info = blob(4)
    origin = swarm.origin("origin", (data, info))
    holder = RawClient(info, "holder", swarm.clock, cancel_every=10.0)
    with capturedLogs() as events:
        swarm.dial_in(origin, holder)
        swarm.run(lambda: holder.lost, limit=60)
    assert holder.answered
    # Its cancels kept the connection from the idle timeout (conn_tti 30 s); moving no piece for slot_idle (30 s)
    # evicted it at the next preemption (every 5 s).
    assert 30.0 <= holder.lost_at <= 35.5
    assert [(e.code, e.message) for e in holder.errors()] == [(wire.ErrorCode.BUSY, "no piece moved for 30 s")]
    evicted = [e for e in events if e.get("log_format") == "evicting peer {peer} from {digest}: {why}"]
    assert [e["peer"] for e in evicted] == [peer_id("holder")[:12]]
    assert origin.scheduler.stats().connections_evicted == 1
    assert origin.scheduler.stats().connections == 0


def test_a_newcomer_is_admitted_when_slot_holders_take_every_slot(swarm):
    data, info = blob(6)
    origin = swarm.origin("origin", (data, info))
    holders = [RawClient(info, f"holder{i}", swarm.clock, cancel_every=1.0) for i in range(10)]
    for holder in holders:
        swarm.dial_in(origin, holder)
    swarm.run(lambda: swarm.clock.seconds() >= 1.0)
    assert all(h.answered for h in holders) and origin.scheduler.stats().connections == 10
    # A handshake now, within the holders' grace (5 s), from a peer far behind, takes one of the two catch-up
    # slots, and a third is refused as at capacity (slot holders get no more than those two)...
    early = [RawClient(info, f"early{i}", swarm.clock) for i in range(3)]
    for client in early:
        swarm.dial_in(origin, client)
        swarm.flush()
    assert [c.answered for c in early] == [True, True, False]
    assert [(e.code, e.message) for e in early[2].errors()] == [(wire.ErrorCode.BUSY, "at capacity")]
    # ...and an agent that comes once they are past it evicts the oldest holder and downloads at once.
    swarm.run(lambda: swarm.clock.seconds() >= 6.0)
    d = swarm.agent("agent").download(info.digest)
    took = swarm.run(lambda: done(d))
    assert read(resolved(d)) == data and took < 1.0
    lost = [h for h in [*holders, *early[:2]] if h.lost]
    assert lost == [holders[0]]
    assert [(e.code, e.message) for e in lost[0].errors()] == [(wire.ErrorCode.BUSY, "a newcomer needs the slot")]


def test_connections_per_address_are_limited_but_loopback_is_not(swarm):
    data, info = blob(4)
    origin = swarm.origin("origin", (data, info))
    remote = [RawClient(info, f"remote{i}", swarm.clock) for i in range(4)]
    local = [RawClient(info, f"local{i}", swarm.clock) for i in range(6)]
    with capturedLogs() as events:
        for client in remote:
            swarm.dial_in(origin, client, host="10.0.0.9")
        for client in local:
            swarm.dial_in(origin, client, host="127.0.0.1")
        swarm.flush()
    assert [c.answered for c in remote] == [True, True, True, False]
    assert [(e.code, e.message) for e in remote[3].errors()] == [
        (wire.ErrorCode.BUSY, "3 connections from 10.0.0.9 for this blob already")
    ]
    assert remote[3].lost and all(c.answered for c in local)
    refused = [e for e in events if e.get("log_format") == "refusing peer {peer} from {peer_addr} for {digest}: {why}"]
    assert [(e["peer"], e["peer_addr"]) for e in refused] == [(peer_id("remote3")[:12], "10.0.0.9")]
    # One of the three closes: the address has room again.
    assert remote[0].transport is not None
    remote[0].transport.loseConnection()
    swarm.flush()
    again = RawClient(info, "remote4", swarm.clock)
    swarm.dial_in(origin, again, host="10.0.0.9")
    swarm.flush()
    assert again.answered


def test_connections_per_address_over_all_blobs_are_limited(tmp_path):
    swarm = Swarm(tmp_path, max_conns_per_address_total=2)
    blobs = [blob(2, seed=i) for i in range(3)]
    origin = swarm.origin("origin", *blobs)
    clients = [RawClient(info, f"c{i}", swarm.clock) for i, (_, info) in enumerate(blobs)]
    for client in clients:
        swarm.dial_in(origin, client, host="10.0.0.9")
    swarm.flush()
    assert [c.answered for c in clients] == [True, True, False]
    assert [e.message for e in clients[2].errors()] == ["2 connections from 10.0.0.9 already"]
    swarm.stop_and_settle()


def test_a_handshake_for_another_namespace_is_refused_by_an_agent(swarm):
    data, info = blob(4)
    swarm.origin("origin", (data, info))
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    swarm.run(lambda: done(d))
    assert read(resolved(d)) == data
    stranger = RawClient(info, "stranger", swarm.clock, namespace="other/ns")
    swarm.dial_in(agent, stranger)
    swarm.flush()
    assert not stranger.answered and stranger.lost
    assert [(e.code, e.message) for e in stranger.errors()] == [
        (wire.ErrorCode.UNKNOWN_BLOB, "namespace 'other/ns' differs")
    ]
    # The namespace the agent pulled it under is served.
    neighbour = RawClient(info, "neighbour", swarm.clock)
    swarm.dial_in(agent, neighbour)
    swarm.flush()
    assert neighbour.answered and not neighbour.errors()


def test_an_origin_answers_for_the_namespace_it_is_asked(swarm):
    # The origin's store is content-addressed and keeps no namespace (its HTTP API serves a blob under any
    # namespace too): a layer pushed to two repositories is one blob, and pulls of either must work.
    data, info = blob(4)
    origin = swarm.origin("origin", (data, info))
    first, second = RawClient(info, "first", swarm.clock), RawClient(info, "second", swarm.clock, namespace="b/c")
    swarm.dial_in(origin, first)
    swarm.dial_in(origin, second)
    swarm.flush()
    answers = [[m for m in c.messages if isinstance(m, wire.Handshake)] for c in (first, second)]
    assert [[h.namespace for h in a] for a in answers] == [[NAMESPACE], ["b/c"]]
