"""The scheduler: schedulers joined through iosim on one Clock (tests/p2p/swarm.py), no sockets, no waiting."""

from __future__ import annotations

from swarm import NAMESPACE, PIECE, RawPeer, Swarm, blob, outcome, resolved, seed_store
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from kraken.core.peer import PeerInfo
from kraken.p2p import wire
from kraken.p2p.config import BandwidthConfig
from kraken.p2p.scheduler import BlobNotFound, DownloadFailed


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def done(d: Deferred[str]) -> bool:
    return d.called


def test_one_seeder_many_leechers(swarm):
    data, info = blob(40)
    origin = swarm.origin("origin", (data, info))
    agents = [swarm.agent(f"agent{i}") for i in range(6)]
    downloads = [a.download(info.digest) for a in agents]
    swarm.run(lambda: all(map(done, downloads)))
    for agent, d in zip(agents, downloads, strict=True):
        assert read(resolved(d)) == data
        assert resolved(Deferred.fromCoroutine(agent.store.metainfo(info.digest))) == info
    stats = [a.scheduler.stats() for a in agents]
    assert all(s.downloads_completed == 1 and s.pieces_in == info.num_pieces for s in stats)
    # The agents exchanged pieces among themselves: the origin served fewer than one copy per agent.
    served = origin.scheduler.stats().pieces_out
    assert served < len(agents) * info.num_pieces
    from_origin = sum(s.pieces_in_from_origins for s in stats)
    assert from_origin <= served  # the rest were endgame duplicates
    assert sum(s.pieces_in_from_agents for s in stats) == len(agents) * info.num_pieces - from_origin > 0
    assert sum(s.pieces_out for s in stats) >= sum(s.pieces_in_from_agents for s in stats)
    # Every agent announced once more, complete.
    assert {p.peer_id for p in swarm.tracker.announces if p.complete} == {a.scheduler.peer_id for a in agents}


def test_peers_holding_different_pieces_complete_each_other(swarm):
    data, info = blob(30)
    swarm.publish(info)
    evens, odds = swarm.agent("evens"), swarm.agent("odds")
    seed_store(evens.store, data, info, list(range(0, info.num_pieces, 2)))
    seed_store(odds.store, data, info, list(range(1, info.num_pieces, 2)))
    third = swarm.agent("third")
    downloads = [evens.download(info.digest), odds.download(info.digest), third.download(info.digest)]
    swarm.run(lambda: all(map(done, downloads)))
    assert all(read(resolved(d)) == data for d in downloads)
    half = info.num_pieces // 2
    assert evens.scheduler.stats().pieces_in == half  # only what it lacked
    assert odds.scheduler.stats().pieces_in == info.num_pieces - half
    assert third.scheduler.stats().pieces_in_from_origins == 0


def test_concurrent_requests_share_one_download(swarm):
    data, info = blob(10)
    origin = swarm.origin("origin", (data, info))
    agent = swarm.agent("agent")
    first, second = agent.download(info.digest), agent.download(info.digest)
    swarm.run(lambda: done(first) and done(second))
    assert resolved(first) == resolved(second)
    assert swarm.tracker.metainfo_calls == 1
    assert origin.scheduler.stats().pieces_out == info.num_pieces
    # Once in the cache, it is served from there without the network.
    again = agent.download(info.digest)
    assert read(resolved(again)) == data
    assert origin.scheduler.stats().pieces_out == info.num_pieces


def test_unknown_blob(swarm):
    _, info = blob(3)
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    swarm.flush()
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(BlobNotFound)


def test_a_corrupt_piece_is_detected_and_the_peer_blacklisted(swarm):
    data, info = blob(12)
    liars: list[RawPeer] = []

    def corrupt(peer: RawPeer, index: int) -> None:
        peer.write(wire.Piece(index, info.piece_size(index)), bytes(info.piece_size(index)))

    def build() -> RawPeer:
        liars.append(RawPeer(info, data, corrupt, "liar"))
        return liars[-1]

    swarm.publish(info)
    swarm.listen("liar", build, origin=False, digest=info.digest)
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    swarm.run(lambda: bool(liars) and liars[0].lost)
    # Closed after the first bad piece, and not dialled again for the blacklist's 30 s, announce after announce.
    announces = len(swarm.tracker.announces)
    swarm.run(lambda: swarm.clock.seconds() > 20.0)
    assert len(swarm.tracker.announces) > announces + 10
    # The pipeline of three, and one more asked for when the bad piece had arrived and was being checked.
    assert len(liars) == 1 and len(liars[0].requests) == 4
    assert not done(d)
    swarm.origin("origin", (data, info))
    swarm.run(lambda: done(d))
    assert read(resolved(d)) == data
    stats = agent.scheduler.stats()
    assert stats.corrupt_pieces == 1
    assert stats.pieces_in_from_origins == info.num_pieces


def test_a_peer_that_breaks_the_protocol_is_blacklisted(swarm):
    data, info = blob(8)
    swarm.origin("origin", (data, info))
    rude: list[RawPeer] = []

    def garbage(peer: RawPeer, index: int) -> None:
        assert peer.transport is not None
        peer.transport.write(b"\xff" * 16)

    def build() -> RawPeer:
        rude.append(RawPeer(info, data, garbage, "rude"))
        return rude[-1]

    swarm.listen("rude", build, origin=False, digest=info.digest)
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    swarm.run(lambda: done(d))
    assert read(resolved(d)) == data
    assert len(rude) == 1 and rude[0].lost


def test_a_peer_that_disconnects_mid_piece(swarm):
    data, info = blob(10)
    swarm.origin("origin", (data, info))
    quitters: list[RawPeer] = []

    def half_then_hang_up(peer: RawPeer, index: int) -> None:
        size = info.piece_size(index)
        assert peer.transport is not None
        peer.transport.write(wire.encode_header(wire.Piece(index, size)) + peer.piece(index)[: size // 2])
        peer.transport.loseConnection()

    def build() -> RawPeer:
        quitters.append(RawPeer(info, data, half_then_hang_up, "quitter"))
        return quitters[-1]

    swarm.listen("quitter", build, origin=True, digest=info.digest)  # an "origin": asked first, five at a time
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    swarm.run(lambda: done(d))
    assert read(resolved(d)) == data
    assert quitters and all(q.lost for q in quitters)
    assert agent.scheduler.stats().pieces_in == info.num_pieces


def test_requests_that_time_out_go_to_another_peer(swarm):
    data, info = blob(6)
    silent: list[RawPeer] = []

    def ignore(peer: RawPeer, index: int) -> None:
        pass

    def build() -> RawPeer:
        silent.append(RawPeer(info, data, ignore, "silent"))
        return silent[-1]

    swarm.publish(info)
    swarm.listen("silent", build, origin=False, digest=info.digest)
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    swarm.run(lambda: bool(silent and silent[0].requests))
    assert sorted(silent[0].requests) == sorted(set(silent[0].requests)) and len(silent[0].requests) == 3
    # After the request timeout (4 s) the first three pieces are given up and others asked for.
    took = swarm.run(lambda: len(silent[0].requests) > 3)
    assert 4.0 <= took <= 4.5
    assert set(silent[0].requests[3:]).isdisjoint(silent[0].requests[:3])
    assert not done(d)
    origin = swarm.origin("origin", (data, info))
    swarm.run(lambda: done(d))
    assert read(resolved(d)) == data
    assert origin.scheduler.stats().pieces_out >= info.num_pieces


def test_a_stalled_download_fails_after_the_leecher_tti(tmp_path):
    swarm = Swarm(tmp_path, leecher_tti=20.0, preemption_interval=1.0)
    data, info = blob(4)
    swarm.publish(info)
    swarm.listen("silent", lambda: RawPeer(info, data, lambda p, i: None, "silent"), origin=True, digest=info.digest)
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    took = swarm.run(lambda: done(d))
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(DownloadFailed)
    assert 20.0 <= took <= 22.0
    assert agent.scheduler.stats().torrents == 0
    swarm.stop()


def test_restart_resumes_with_the_missing_pieces_only(swarm, tmp_path):
    data, info = blob(20)
    swarm.publish(info)
    stingy: list[RawPeer] = []

    def first_eight(peer: RawPeer, index: int) -> None:
        if len(peer.requests) <= 8:
            peer.write(wire.Piece(index, info.piece_size(index)), peer.piece(index))

    def build() -> RawPeer:
        stingy.append(RawPeer(info, data, first_eight, "stingy"))
        return stingy[-1]

    swarm.listen("stingy", build, origin=True, digest=info.digest)
    before = swarm.agent("before", store_root=str(tmp_path / "agent"))
    d = before.download(info.digest)
    swarm.run(lambda: before.scheduler.stats().pieces_in == 8)
    before.scheduler.stopService()  # the agent goes down mid-download
    swarm.flush()
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(DownloadFailed)

    origin = swarm.origin("origin", (data, info))
    after = swarm.agent("after", store_root=str(tmp_path / "agent"))
    d = after.download(info.digest)
    swarm.run(lambda: done(d))
    assert read(resolved(d)) == data
    assert after.scheduler.stats().pieces_in == info.num_pieces - 8
    assert origin.scheduler.stats().pieces_out <= info.num_pieces - 8


def test_a_finished_torrent_leaves_memory_and_is_served_again_from_the_cache(tmp_path):
    swarm = Swarm(tmp_path, seeder_tti=30.0, preemption_interval=1.0)
    data, info = blob(5)
    swarm.origin("origin", (data, info))
    first = swarm.agent("first")
    d = first.download(info.digest)
    swarm.run(lambda: done(d))
    swarm.run(lambda: first.scheduler.stats().torrents == 0, limit=40.0)
    # The origin is gone; the second agent gets every piece from the first agent's cache.
    swarm.tracker.origins.clear()
    second = swarm.agent("second")
    d2 = second.download(info.digest)
    swarm.run(lambda: done(d2))
    assert read(resolved(d2)) == data
    assert first.scheduler.stats().pieces_out == info.num_pieces
    swarm.stop()


def test_ingress_bandwidth_limit(tmp_path):
    rate = 4 * PIECE  # bytes per second
    swarm = Swarm(tmp_path)
    data, info = blob(20)
    swarm.origin("origin", (data, info))
    agent = swarm.agent("agent", bandwidth=BandwidthConfig(ingress_bits_per_sec=rate * 8, egress_bits_per_sec=10**9))
    d = agent.download(info.digest)
    took = swarm.run(lambda: done(d), step=0.05)
    assert read(resolved(d)) == data
    # One second of burst, then the rate.
    assert (len(data) - rate) / rate <= took <= len(data) / rate + 1.0
    swarm.stop()


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


def test_namespace_reaches_the_tracker(swarm):
    data, info = blob(3)
    swarm.origin("origin", (data, info))
    agent = swarm.agent("agent")
    d = agent.download(info.digest, namespace="other/repo")
    swarm.run(lambda: done(d))
    assert read(resolved(d)) == data
    assert NAMESPACE != "other/repo"


def test_endgame_duplicates_are_written_and_counted_once(swarm):
    data, info = blob(1)  # one piece: the endgame from the first request
    first = swarm.origin("first", (data, info))
    second = swarm.origin("second", (data, info))
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    swarm.run(lambda: done(d))
    assert read(resolved(d)) == data
    stats = agent.scheduler.stats()
    assert (stats.pieces_in, stats.bytes_in) == (1, len(data))
    # Both origins were asked and both answered; the second copy was dropped.
    served = first.scheduler.stats().pieces_out + second.scheduler.stats().pieces_out
    assert served == 2


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


def test_a_busy_peer_is_tried_again_after_a_short_backoff_not_the_blacklist(swarm):
    from kraken.p2p.scheduler import BUSY_BACKOFF

    data, info = blob(4)
    swarm.publish(info)
    seeder = swarm.agent("seeder", max_conns_per_torrent=1)
    seed_store(seeder.store, data, info)
    swarm.tracker.peers[info.digest] = {
        seeder.scheduler.peer_id: PeerInfo(seeder.scheduler.peer_id, "127.0.0.1", seeder.port, complete=True)
    }
    # The first agent takes the seeder's only slot, and has room for none but the seeder itself.
    first, second = swarm.agent("first", max_conns_per_torrent=1), swarm.agent("second")
    d1, d2 = first.download(info.digest), second.download(info.digest)
    swarm.run(lambda: done(d1), step=0.01)
    assert not done(d2)  # the seeder had room for one; the second was told BUSY
    swarm.run(lambda: done(d2))
    assert read(resolved(d2)) == data
    assert BUSY_BACKOFF <= swarm.clock.seconds() < swarm.config.get("blacklist", 30.0)


def test_a_peer_that_does_not_answer_in_time_is_tried_again_after_a_short_backoff_not_the_blacklist(swarm):
    # Behind a saturated link a SYN or a handshake is lost now and then: the peer is not at fault.
    from twisted.internet.protocol import Protocol

    from kraken.p2p.scheduler import BUSY_BACKOFF
    from swarm import HANDSHAKE_TIMEOUT

    _, info = blob(4)
    swarm.publish(info)
    built: list[float] = []

    def silent() -> Protocol:
        built.append(swarm.clock.seconds())
        return Protocol()  # takes the connection, never answers the handshake

    swarm.listen("silent", silent, origin=False, digest=info.digest)
    d = swarm.agent("agent").download(info.digest)
    swarm.run(lambda: len(built) >= 2, limit=swarm.config.get("blacklist", 30.0) - 1)
    assert built[1] - built[0] >= HANDSHAKE_TIMEOUT + BUSY_BACKOFF
    assert not done(d)
    swarm.run(lambda: len(built) >= 3)  # and again, while it stays silent
    swarm.clock.advance(HANDSHAKE_TIMEOUT)  # the last dial gives up too, before the fixture checks the clock
    swarm.flush()


def test_a_handshake_for_a_blob_the_origin_is_fetching_is_answered_busy_until_it_lands(swarm):
    from kraken.p2p.scheduler import BUSY_BACKOFF

    data, info = blob(6)
    asked: list[tuple[str, str]] = []

    async def on_missing(namespace, digest):
        asked.append((namespace, str(digest)))
        return True  # being fetched from the backend

    origin = swarm.origin("origin", on_missing=on_missing)
    swarm.publish(info)
    swarm.tracker.origins[info.digest] = [PeerInfo(origin.scheduler.peer_id, "127.0.0.1", origin.port, True, True)]
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    swarm.run(lambda: bool(asked), step=0.01)
    assert asked == [(NAMESPACE, str(info.digest))] and not done(d)
    seed_store(origin.store, data, info)  # the fetch from the backend lands
    took = swarm.run(lambda: done(d))
    assert read(resolved(d)) == data
    assert took <= BUSY_BACKOFF + 1.5  # dialled again after the busy backoff, not the 30 s blacklist
    assert len(asked) == 1


def test_a_handshake_for_a_blob_nobody_has_is_unknown(swarm):
    _, info = blob(2)

    async def on_missing(namespace, digest):
        return False  # no backend has it

    origin = swarm.origin("origin", on_missing=on_missing)
    swarm.publish(info)
    swarm.tracker.origins[info.digest] = [PeerInfo(origin.scheduler.peer_id, "127.0.0.1", origin.port, True, True)]
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    swarm.run(lambda: swarm.clock.seconds() > 10.0)
    # Refused as unknown: blacklisted for the blob, so not dialled again though the agent keeps announcing.
    assert not done(d) and origin.scheduler.stats().connections == 0
    assert origin.dials == 1 and len(swarm.tracker.announces) > 3


def test_a_connection_going_away_while_its_requests_wait_does_not_spin_the_serving_loop(swarm, monkeypatch):
    """A transport stops its producer before the protocol hears of the loss: the serving loop, waiting for that
    connection to drain, must drop its requests then, not wait for it again at once, for ever."""
    data, info = blob(8)
    origin = swarm.origin("origin", (data, info))
    scheduler = origin.scheduler
    opened = scheduler._opened
    flows = []

    def opened_full(torrent, protocol, session, **kw):  # every write buffer full from the start
        opened(torrent, protocol, session, **kw)
        protocol._flow.pauseProducing()
        flows.append(protocol._flow)

    monkeypatch.setattr(scheduler, "_opened", opened_full)
    swarm.agent("agent").download(info.digest)
    swarm.run(lambda: bool(scheduler._outbox))
    assert scheduler._serving and scheduler.stats().pieces_out == 0
    picks = 0
    pick = scheduler._pick

    def counted() -> object:
        nonlocal picks
        picks += 1
        if picks > 100:
            raise AssertionError("the serving loop spins")
        return pick()

    monkeypatch.setattr(scheduler, "_pick", counted)
    (flow,) = flows
    flow.stopProducing()  # what the transport does first when the connection is lost
    assert picks == 1 and not scheduler._serving and not scheduler._outbox


def test_an_origin_sends_no_piece_twice_to_peers_still_connected_until_it_has_sent_every_piece(swarm, monkeypatch):
    from kraken.p2p.scheduler import _Send

    data, info = blob(4)
    origin = swarm.origin("origin", (data, info))
    scheduler = origin.scheduler
    opened = scheduler._opened

    def opened_full(torrent, protocol, session, **kw):  # nothing is sent: the test sets what was
        opened(torrent, protocol, session, **kw)
        protocol._flow.pauseProducing()

    monkeypatch.setattr(scheduler, "_opened", opened_full)
    for name in ("first", "second"):
        swarm.agent(name).download(info.digest)
    torrents = scheduler._torrents
    swarm.run(lambda: info.digest in torrents and len(torrents[info.digest].conns) == 2)
    torrent = torrents[info.digest]
    first, second = torrent.conns.values()
    torrent.sent, torrent.last_sent = {0: 1}, {0: (swarm.clock.seconds(), first.peer_id)}
    swarm.clock.advance(20)  # long past the request timeout (4 s), before the idle eviction (slot_idle)
    assert scheduler._recently_seeded(_Send(torrent, second, 0, 0))  # pieces 1-3 were never sent
    assert not scheduler._recently_seeded(_Send(torrent, first, 0, 1))  # its own receiver may ask again
    torrent.sent = dict.fromkeys(range(info.num_pieces), 1)
    assert not scheduler._recently_seeded(_Send(torrent, second, 0, 2))  # a whole copy is out: the window rules
