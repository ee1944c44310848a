"""kraken.p2p.announce: announcing and dialling, in swarms joined through iosim on one Clock (tests/p2p/swarm.py)."""

from __future__ import annotations

from swarm import BUSY_BACKOFF, HANDSHAKE_TIMEOUT, NAMESPACE, blob, done, read, resolved, seed_store
from twisted.internet.protocol import Protocol

from kraken.core.peer import PeerInfo


def test_namespace_reaches_the_tracker(swarm):
    data, info = blob(3)
    swarm.origin("origin", (data, info))
    agent = swarm.agent("agent")
    d = agent.download(info.digest, namespace="other/repo")
    swarm.run(lambda: done(d))
    assert read(resolved(d)) == data
    assert NAMESPACE != "other/repo"


def one_slot_seeder_and_two_agents(swarm, catch_up: int):
    """A seeder with one slot (and ``catch_up`` more) that the tracker names, and two agents downloading from it:
    the first has room for none but the seeder. Returns the blob and both downloads."""
    data, info = blob(4)
    swarm.publish(info)
    seeder = swarm.agent("seeder", max_conns_per_torrent=1, catch_up_conns=catch_up)
    seed_store(seeder.store, data, info)
    swarm.tracker.peers[info.digest] = {
        seeder.scheduler.peer_id: PeerInfo(seeder.scheduler.peer_id, "127.0.0.1", seeder.port, complete=True)
    }
    first, second = swarm.agent("first", max_conns_per_torrent=1), swarm.agent("second")
    return data, first.download(info.digest), second.download(info.digest)


def test_a_busy_peer_is_tried_again_after_a_short_backoff_not_the_blacklist(swarm):
    data, d1, d2 = one_slot_seeder_and_two_agents(swarm, catch_up=0)
    swarm.run(lambda: done(d1), step=0.01)
    assert not done(d2)  # the seeder had room for one; the second was told BUSY
    swarm.run(lambda: done(d2))
    assert read(resolved(d2)) == data
    assert BUSY_BACKOFF <= swarm.clock.seconds() < swarm.config.get("blacklist", 30.0)


def test_a_full_seeder_still_admits_peers_far_behind_it(swarm):
    data, d1, d2 = one_slot_seeder_and_two_agents(swarm, catch_up=1)
    swarm.run(lambda: done(d1) and done(d2), step=0.01)
    assert read(resolved(d2)) == data
    assert swarm.clock.seconds() < BUSY_BACKOFF  # nobody was told BUSY


def test_a_peer_that_does_not_answer_in_time_is_tried_again_after_a_short_backoff_not_the_blacklist(swarm):
    # Behind a saturated link a SYN or a handshake is lost now and then: the peer is not at fault.
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
