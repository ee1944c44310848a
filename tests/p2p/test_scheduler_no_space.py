"""An agent whose disk fills up mid-download: the pull fails at once with
``OutOfSpace``, the partial blob is deleted, the agent keeps serving what it
holds, and the next download works once there is space."""

from __future__ import annotations

import errno
import os

import pytest
from full_disk import files_under, no_space
from swarm import blob, outcome, resolved
from twisted.python.failure import Failure

import kraken.store.downloads as downloads_module
from kraken.files import OutOfSpace


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_fails_the_pull_at_once_and_leaves_no_partial_blob(swarm, monkeypatch, code):
    data, info = blob(12)
    other_data, other_info = blob(4, seed=9)
    swarm.origin("origin", (data, info), (other_data, other_info))
    agent = swarm.agent("agent")
    # The agent already holds one blob: it must go on serving it.
    held = agent.download(other_info.digest)
    swarm.run(lambda: held.called)
    assert resolved(held)

    real, writes = downloads_module._pwrite, []

    def filling(path, offset, piece):  # only this agent's disk is full
        if path.startswith(agent.store._root):
            writes.append(offset)
            if len(writes) > 3:
                raise no_space(code)
        real(path, offset, piece)

    monkeypatch.setattr(downloads_module, "_pwrite", filling)
    d = agent.download(info.digest)
    took = swarm.run(lambda: d.called)
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(OutOfSpace), failure
    assert failure.value.errno == code
    assert str(failure.value).startswith("no space left on device")
    assert took < 5.0, "failed at once, not after the leecher TTI"
    swarm.flush()
    assert files_under(os.path.join(agent.store._root, "downloads")) == [], "the partial blob is deleted"
    assert agent.scheduler.stats().torrents == 1  # the held blob's seeding torrent only

    # Another agent still gets the held blob from it (and the origin).
    peer = swarm.agent("peer")
    got = peer.download(other_info.digest)
    swarm.run(lambda: got.called)
    assert resolved(got)

    # Space is back: the same pull works, from the start.
    monkeypatch.setattr(downloads_module, "_pwrite", real)
    again = agent.download(info.digest)
    swarm.run(lambda: again.called)
    with open(resolved(again), "rb") as f:
        assert f.read() == data
