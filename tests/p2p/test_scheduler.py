"""The scheduler, the P2P service's facade: whole swarms joined through iosim on one Clock (tests/p2p/swarm.py), no
sockets, no waiting. The parts have their own tests: test_announce, test_connections, test_leech, test_seed,
test_torrent (and the pure policies: test_dials, test_slots, test_dispatch, test_seeding)."""

from __future__ import annotations

from swarm import NAMESPACE, PIECE, blob, done, outcome, read, resolved, seed_store
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from kraken.p2p.scheduler import BlobNotFound, Download
from kraken.store.downloads import pread

SCHEDULER = "kraken.p2p.scheduler.Scheduler"


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


def test_a_blob_put_in_the_cache_by_other_means_is_seeded_once_told(swarm):
    """An agent that installed a blob itself (its stream from an origin) seeds it after ``seed``, as a finished
    download is seeded: it announces complete, and another agent downloads every piece from it, none from the
    origin the tracker knows of (which has nothing to give: it is not even listening)."""
    data, info = blob(12)
    first = swarm.agent("first")
    seed_store(first.store, data, info)
    swarm.publish(info)
    first.scheduler.seed(NAMESPACE, info)
    first.scheduler.seed(NAMESPACE, info)  # a second call changes nothing
    swarm.run(lambda: any(p.complete for p in swarm.tracker.announces))
    assert [p.peer_id for p in swarm.tracker.announces] == [first.scheduler.peer_id]
    second = swarm.agent("second")
    got = second.download(info.digest)
    swarm.run(lambda: done(got))
    assert read(resolved(got)) == data
    assert second.scheduler.stats().pieces_in_from_agents == info.num_pieces
    assert first.scheduler.stats().pieces_out == info.num_pieces


def test_unknown_blob(swarm):
    _, info = blob(3)
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    swarm.flush()
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(BlobNotFound)


def test_a_caller_that_goes_away_leaves_the_others_their_shared_download(swarm):
    data, info = blob(6)
    swarm.origin("origin", (data, info))
    agent = swarm.agent("agent")
    first, second = agent.download(info.digest), agent.download(info.digest)
    first.cancel()  # one caller goes away
    first.addErrback(lambda f: None)
    swarm.run(lambda: done(second))
    assert read(resolved(second)) == data
    assert swarm.tracker.metainfo_calls == 1


def test_every_part_logs_under_the_schedulers_name(swarm):
    # Operators and the adversarial suite read these lines with their "[kraken.p2p.scheduler.Scheduler#info]" prefix.
    data, info = blob(4)
    swarm.origin("origin", (data, info))
    with capturedLogs() as events:
        d = swarm.agent("agent").download(info.digest)
        swarm.run(lambda: done(d))
    formats = {e["log_format"]: e["log_namespace"] for e in events if "log_format" in e}
    assert formats["downloading {digest} ({bytes} bytes, {pieces} pieces, {have} on disk)"] == SCHEDULER
    assert formats["downloaded {digest}"] == SCHEDULER
    assert formats["sent every piece of {digest} once"] == SCHEDULER


def test_start_hands_out_the_download_in_progress_piece_by_piece(swarm):
    data, info = blob(6)
    swarm.origin("origin", (data, info))
    agent = swarm.agent("agent")
    started = Deferred.fromCoroutine(agent.scheduler.start(NAMESPACE, info.digest))
    swarm.flush()
    download = resolved(started)
    assert isinstance(download, Download) and download.info == info
    pieces = [download.when_piece(i) for i in range(info.num_pieces)]
    finished = download.finished()
    arrived = []
    for i, d in enumerate(pieces):  # each fires once its bytes are checked and written in the partial file
        d.addCallback(lambda _, i=i: arrived.append((i, pread(download.data_path, info.piece_offset(i), PIECE))))
    swarm.run(lambda: done(finished))
    assert sorted(arrived) == [(i, data[i * PIECE : (i + 1) * PIECE]) for i in range(info.num_pieces)]
    path = resolved(finished)
    assert read(path) == data and path == download.cache_path
    # Installed: start gives the cached path, and a late reader of the old download is answered at once.
    assert resolved(Deferred.fromCoroutine(agent.scheduler.start(NAMESPACE, info.digest))) == download.cache_path
    assert done(download.when_piece(0)) and resolved(download.finished()) == download.cache_path
