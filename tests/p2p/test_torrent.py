"""kraken.p2p.torrent: the lifecycle of torrents (the seeder and leecher TTIs), in a swarm joined through iosim on
one Clock (tests/p2p/swarm.py)."""

from __future__ import annotations

from swarm import RawPeer, Swarm, blob, done, outcome, read, resolved
from twisted.python.failure import Failure

from kraken.p2p.torrent import DownloadFailed


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
