"""kraken.p2p.leech: requesting, receiving, checking and writing pieces, in swarms joined through iosim on one Clock
(tests/p2p/swarm.py)."""

from __future__ import annotations

import os

from swarm import (
    NAMESPACE,
    PIECE,
    PIPELINE_LIMIT,
    RawPeer,
    Swarm,
    blob,
    done,
    outcome,
    peer_id,
    read,
    resolved,
    seed_store,
)
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from kraken.core import MetaInfo
from kraken.p2p import wire
from kraken.p2p.config import BandwidthConfig
from kraken.p2p.torrent import DownloadFailed


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


def test_a_corrupt_piece_is_detected_and_the_peer_blacklisted(swarm):
    data, info = blob(12)

    def corrupt(peer: RawPeer, index: int) -> None:
        peer.write(wire.Piece(index, info.piece_size(index)), bytes(info.piece_size(index)))

    swarm.publish(info)
    liars = swarm.raw_peers("liar", info, data, corrupt, origin=False)
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    swarm.run(lambda: bool(liars) and liars[0].lost)
    # Closed after the first bad piece, and not dialled again for the blacklist's 30 s, announce after announce.
    announces = len(swarm.tracker.announces)
    swarm.run(lambda: swarm.clock.seconds() > 20.0)
    assert len(swarm.tracker.announces) > announces + 10
    # The pipeline's requests, and one more asked for when the bad piece had arrived and was being checked.
    assert len(liars) == 1 and len(liars[0].requests) == PIPELINE_LIMIT + 1
    assert not done(d)
    swarm.origin("origin", (data, info))
    swarm.run(lambda: done(d))
    assert read(resolved(d)) == data
    stats = agent.scheduler.stats()
    assert stats.corrupt_pieces == 1
    assert stats.pieces_in_from_origins == info.num_pieces


def test_a_peer_that_disconnects_mid_piece(swarm):
    data, info = blob(10)
    swarm.origin("origin", (data, info))

    def half_then_hang_up(peer: RawPeer, index: int) -> None:
        size = info.piece_size(index)
        assert peer.transport is not None
        peer.transport.write(wire.encode_header(wire.Piece(index, size)) + peer.piece(index)[: size // 2])
        peer.transport.loseConnection()

    # An "origin": asked first, five at a time.
    quitters = swarm.raw_peers("quitter", info, data, half_then_hang_up, origin=True)
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    swarm.run(lambda: done(d))
    assert read(resolved(d)) == data
    assert quitters and all(q.lost for q in quitters)
    assert agent.scheduler.stats().pieces_in == info.num_pieces


def test_requests_that_time_out_go_to_another_peer(swarm):
    data, info = blob(6)

    def ignore(peer: RawPeer, index: int) -> None:
        pass

    swarm.publish(info)
    silent = swarm.raw_peers("silent", info, data, ignore, origin=False)
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    swarm.run(lambda: bool(silent and silent[0].requests))
    first = list(silent[0].requests)
    assert sorted(first) == sorted(set(first)) and len(first) == PIPELINE_LIMIT
    # After the request timeout (4 s) the pieces of the first requests are given up and others asked for.
    took = swarm.run(lambda: len(silent[0].requests) > PIPELINE_LIMIT)
    assert 4.0 <= took <= 4.5
    assert set(silent[0].requests[PIPELINE_LIMIT:]).isdisjoint(silent[0].requests[:PIPELINE_LIMIT])
    assert not done(d)
    origin = swarm.origin("origin", (data, info))
    swarm.run(lambda: done(d))
    assert read(resolved(d)) == data
    assert origin.scheduler.stats().pieces_out >= info.num_pieces


def test_restart_resumes_with_the_missing_pieces_only(swarm, tmp_path):
    data, info = blob(20)
    swarm.publish(info)

    def first_eight(peer: RawPeer, index: int) -> None:
        if len(peer.requests) <= 8:
            peer.write(wire.Piece(index, info.piece_size(index)), peer.piece(index))

    swarm.raw_peers("stingy", info, data, first_eight, origin=True)
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


def test_a_forged_metainfo_is_never_installed(swarm):
    """Pieces that match a forged metainfo (made for other bytes, under the digest asked for) all arrive and are
    written, but the whole blob's SHA-256 is not that digest: the download fails, nothing is installed, the partial
    blob is deleted."""
    _, info = blob(8)
    evil, _ = blob(8, seed=666)
    forged = MetaInfo.from_bytes(evil, PIECE)
    forged = MetaInfo(digest=info.digest, length=forged.length, piece_length=PIECE, piece_sums=forged.piece_sums)
    swarm.publish(forged)
    swarm.raw_peers(
        "forger",
        forged,
        evil,
        lambda peer, i: peer.write(wire.Piece(i, len(peer.piece(i))), peer.piece(i)),
        origin=True,
    )
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    with capturedLogs() as events:
        swarm.run(lambda: done(d))
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(DownloadFailed)
    [refusal] = [e for e in events if e["log_format"].startswith("refusing to install")]
    assert refusal["log_level"].name == "error" and refusal["digest"] == str(info.digest)
    assert "forged" in str(failure.value) and info.digest.hex in str(failure.value)
    assert not os.path.exists(agent.store.blob_path(info.digest))
    assert os.listdir(swarm.root / "agent" / "downloads") == []
    assert agent.scheduler.stats().pieces_in == info.num_pieces  # every piece matched the forgery


def first_requests_of_a_reader_at_piece_8(swarm, **agent_config) -> list[int]:
    """The first four pieces an agent asks a silent seeder for while its reader waits for piece 8."""
    data, info = blob(24)
    swarm.publish(info)
    seeder = swarm.raw_peers("seeder", info, data, lambda peer, index: None, origin=True)
    agent = swarm.agent("agent", **agent_config)
    started = resolved(Deferred.fromCoroutine(agent.scheduler.start(NAMESPACE, info.digest)))
    started.when_piece(8)  # a client reads from byte 8 x PIECE on
    swarm.run(lambda: bool(seeder and seeder[0].requests))
    return seeder[0].requests[:4]


def test_a_reader_waiting_for_a_piece_makes_the_window_from_there_the_first_requests(swarm):
    """With ``stream_window`` (4), an agent whose reader waits for piece 8 asks first for 8-11, in order."""
    assert first_requests_of_a_reader_at_piece_8(swarm, stream_window=4) == [8, 9, 10, 11]


def test_without_a_stream_window_a_waiting_reader_changes_no_request(swarm):
    assert first_requests_of_a_reader_at_piece_8(swarm, stream_window=0) != [8, 9, 10, 11]  # rarest first


def test_by_default_a_waiting_reader_gets_its_window_first(swarm):
    """The default window (8 pieces): the first four requests are the reader's next pieces, in order."""
    assert first_requests_of_a_reader_at_piece_8(swarm) == [8, 9, 10, 11]


def test_with_piece_log_every_piece_received_is_logged_with_its_times(swarm):
    data, info = blob(6)
    swarm.origin("origin", (data, info))
    logging_agent, quiet_agent = swarm.agent("logging", piece_log=True), swarm.agent("quiet")
    with capturedLogs() as events:
        d = logging_agent.download(info.digest)
        swarm.run(lambda: done(d))
        q = quiet_agent.download(info.digest)
        swarm.run(lambda: done(q))
    lines = [e for e in events if e["log_format"].startswith("piece {index}")]
    assert sorted(e["index"] for e in lines) == list(range(info.num_pieces))  # one each, from the logging agent only
    for e in lines:
        assert e["digest"] == str(info.digest) and e["peer"] == peer_id("origin") and e["role"] == " (origin)"
        assert e["asked"] <= e["first"] <= e["last"] <= e["written"]
