"""kraken.p2p.connections: admission, refusals and blacklists, in swarms joined through iosim on one Clock
(tests/p2p/swarm.py). Hostile peers: test_scheduler_hostile."""

from __future__ import annotations

from swarm import BUSY_BACKOFF, NAMESPACE, RawPeer, blob, done, read, resolved, seed_store

from kraken.core.peer import PeerInfo


def test_a_peer_that_breaks_the_protocol_is_blacklisted(swarm):
    data, info = blob(8)
    swarm.origin("origin", (data, info))

    def garbage(peer: RawPeer, index: int) -> None:
        assert peer.transport is not None
        peer.transport.write(b"\xff" * 16)

    rude = swarm.raw_peers("rude", info, data, garbage, origin=False)
    agent = swarm.agent("agent")
    d = agent.download(info.digest)
    swarm.run(lambda: done(d))
    assert read(resolved(d)) == data
    assert len(rude) == 1 and rude[0].lost


def test_a_handshake_for_a_blob_the_origin_is_fetching_is_answered_busy_until_it_lands(swarm):
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
