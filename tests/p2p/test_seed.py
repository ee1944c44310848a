"""kraken.p2p.seed: serving pieces (the egress bucket, super-seeding, the serving loop), in swarms joined through
iosim on one Clock (tests/p2p/swarm.py). The policy alone: test_seeding."""

from __future__ import annotations

from swarm import PIECE, Swarm, blob, done, read, resolved, seed_store

from kraken.core.peer import PeerInfo
from kraken.p2p import wire
from kraken.p2p.config import BandwidthConfig
from kraken.p2p.seeding import Ask


def test_egress_bandwidth_limit_of_a_seeder(tmp_path):
    rate = 8 * PIECE
    swarm = Swarm(tmp_path)
    data, info = blob(24)
    swarm.origin("origin", (data, info))
    swarm.tracker.origins.clear()
    seeder = swarm.agent("seeder", bandwidth=BandwidthConfig(egress_bits_per_sec=rate * 8))
    seed_store(seeder.store, data, info)
    swarm.tracker.peers[info.digest] = {seeder.scheduler.peer_id: seeder.info}
    swarm.tracker.peers[info.digest][seeder.scheduler.peer_id] = seeder.info.__class__(
        seeder.scheduler.peer_id, "127.0.0.1", seeder.port, complete=True
    )
    leechers = [swarm.agent(f"l{i}") for i in range(2)]
    downloads = [x.download(info.digest) for x in leechers]
    took = swarm.run(lambda: all(map(done, downloads)), step=0.05)
    assert all(read(resolved(d)) == data for d in downloads)
    # The seeder's pieces left at its rate; the leechers shared the rest between them.
    sent = seeder.scheduler.stats().bytes_out
    assert sent >= len(data)
    assert took >= (sent - rate) / rate
    swarm.stop()


def test_a_seeder_declines_to_send_a_piece_again_while_its_first_receiver_passes_it_on(swarm):
    data, info = blob(1)
    origin = swarm.origin("origin", (data, info))
    first, second = swarm.agent("first"), swarm.agent("second")
    downloads = [first.download(info.digest), second.download(info.digest)]
    swarm.run(lambda: all(map(done, downloads)))
    assert all(read(resolved(d)) == data for d in downloads)
    stats = origin.scheduler.stats()
    # Both asked the origin for the only piece; it sent it once and declined the second request.
    assert (stats.pieces_out, stats.requests_declined) == (1, 1)
    got = [first.scheduler.stats(), second.scheduler.stats()]
    assert sorted((s.pieces_in_from_origins, s.pieces_in_from_agents) for s in got) == [(0, 1), (1, 0)]
    assert sum(s.requests_refused for s in got) == 1


def test_a_finished_agent_sends_every_request_it_gets(swarm):
    # Only origins super-seed by default: a finished agent that declined the last pieces of a large swarm's
    # stragglers because it had just sent them elsewhere kept the slowest hosts waiting.
    data, info = blob(1)
    swarm.publish(info)
    seeder = swarm.agent("seeder")
    seed_store(seeder.store, data, info)
    swarm.tracker.peers[info.digest] = {
        seeder.scheduler.peer_id: PeerInfo(seeder.scheduler.peer_id, "127.0.0.1", seeder.port, complete=True)
    }
    downloads = [swarm.agent(name).download(info.digest) for name in ("first", "second")]
    swarm.run(lambda: all(map(done, downloads)))
    assert all(read(resolved(d)) == data for d in downloads)
    assert (seeder.scheduler.stats().pieces_out, seeder.scheduler.stats().requests_declined) == (2, 0)


def test_without_super_seeding_the_seeder_sends_every_request(tmp_path):
    swarm = Swarm(tmp_path, super_seed=False)
    data, info = blob(1)
    origin = swarm.origin("origin", (data, info))
    downloads = [swarm.agent(name).download(info.digest) for name in ("first", "second")]
    swarm.run(lambda: all(map(done, downloads)))
    assert (origin.scheduler.stats().pieces_out, origin.scheduler.stats().requests_declined) == (2, 0)
    swarm.stop()


def full_write_buffers(monkeypatch, scheduler, flows: list | None = None) -> None:
    """Every connection of ``scheduler`` opens with a full write buffer: nothing is sent."""
    connections = scheduler._connections
    opened = connections.opened

    def opened_full(torrent, protocol, session, **kw):
        opened(torrent, protocol, session, **kw)
        protocol._flow.pauseProducing()
        if flows is not None:
            flows.append(protocol._flow)

    monkeypatch.setattr(connections, "opened", opened_full)


def test_a_connection_going_away_while_its_requests_wait_does_not_spin_the_serving_loop(swarm, monkeypatch):
    """A transport stops its producer before the protocol hears of the loss: the serving loop, waiting for that
    connection to drain, must drop its requests then, not wait for it again at once, for ever."""
    data, info = blob(8)
    origin = swarm.origin("origin", (data, info))
    seed = origin.scheduler._seed
    policy = seed._policy
    flows: list = []
    full_write_buffers(monkeypatch, origin.scheduler, flows)
    swarm.agent("agent").download(info.digest)
    swarm.run(lambda: bool(policy))
    assert seed._serving and origin.scheduler.stats().pieces_out == 0
    picks = 0
    pick = policy.next

    def counted(**kw: object) -> object:
        nonlocal picks
        picks += 1
        if picks > 100:
            raise AssertionError("the serving loop spins")
        return pick(**kw)

    monkeypatch.setattr(policy, "next", counted)
    (flow,) = flows
    flow.stopProducing()  # what the transport does first when the connection is lost
    assert picks == 1 and not seed._serving and not policy


def test_an_origin_sends_no_piece_twice_to_peers_still_connected_until_it_has_sent_every_piece(swarm, monkeypatch):
    data, info = blob(4)
    origin = swarm.origin("origin", (data, info))
    scheduler = origin.scheduler
    full_write_buffers(monkeypatch, scheduler)  # nothing is sent: the test sets what was
    for name in ("first", "second"):
        swarm.agent(name).download(info.digest)
    torrents = scheduler._torrents
    swarm.run(lambda: torrents.get(info.digest) is not None and len(torrents.get(info.digest).conns) == 2)
    torrent = torrents.get(info.digest)
    first, second = torrent.conns.values()
    ledger, seed = torrent.ledger, scheduler._seed
    token, _ = ledger.sent(0, first.peer_id)
    ledger.left(0, token, swarm.clock.seconds())
    swarm.clock.advance(20)  # long past the request timeout (4 s), before the idle eviction (slot_idle)
    assert seed._declines(Ask(ledger, second, second.peer_id, 0, 0))  # pieces 1-3 were never sent
    assert not seed._declines(Ask(ledger, first, first.peer_id, 0, 1))  # its own receiver may ask again
    for index in range(1, info.num_pieces):
        ledger.sent(index, first.peer_id)
    assert not seed._declines(Ask(ledger, second, second.peer_id, 0, 2))  # a whole copy is out: the window rules


def pause_after_each_piece(monkeypatch, scheduler, flows: list) -> None:
    """A piece written fills its connection's write buffer, as 1 MiB does a real transport's: the connection is
    writable again only once the test resumes its flow (the buffer has drained)."""
    connections = scheduler._connections
    opened = connections.opened

    def opened_then_filled_by_pieces(torrent, protocol, session, **kw):
        opened(torrent, protocol, session, **kw)
        flows.append(protocol._flow)
        send = protocol.send

        def send_then_full(msg, payload=b""):
            send(msg, payload)
            if isinstance(msg, wire.Piece):
                protocol._flow.pauseProducing()

        protocol.send = send_then_full

    monkeypatch.setattr(connections, "opened", opened_then_filled_by_pieces)


def test_a_request_from_a_connection_with_room_is_served_while_the_others_are_full(swarm, monkeypatch):
    """The serving loop waits for a full connection to drain; a request arriving meanwhile on a connection with room
    in its buffer wakes it (it once waited, behind a slow link, for seconds per piece)."""
    data, info = blob(8)
    origin = swarm.origin("origin", (data, info))
    flows: list = []
    pause_after_each_piece(monkeypatch, origin.scheduler, flows)
    for name in ("first", "second"):
        swarm.agent(name).download(info.digest)
    policy, stats = origin.scheduler._seed._policy, origin.scheduler.stats
    swarm.run(lambda: stats().pieces_out >= 1 and len({a.conn for a in policy.waiting()}) == 2)
    swarm.flush()
    # Each agent was sent one piece and waits for more; both connections are full.
    assert stats().pieces_out == 2 and sum(f.paused for f in flows) == 2
    next(f for f in flows if f.paused).resumeProducing()  # one drains: one more piece goes
    swarm.flush()
    assert stats().pieces_out == 3
