"""Made-up peers and slot holders: a flood of fake "complete" peers (closed ports and tarpits that accept and
never answer) announced from another address does not starve a blob, and idle connections that take an
origin's slots do not keep a pull waiting."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from _clients import MIB, pull, push, repo
from _daemons import write_blob
from _fleet import Fleet, run_all
from _hostile import PROBE_ID, SlotHolder, Tarpit, announce_fake, closed_port, handout, metainfo

from kraken.cluster.ring import Ring
from kraken.core import Digest
from kraken.p2p import wire

BLOB = 16 * MIB
FAKES = 60
TARPITS = 10
FLOOD = "127.0.0.2"  # the attacker's source address (any of 127.0.0.0/8 is loopback)
WAIT = 120.0  # seconds; a safety rail


def pushed(f: Fleet, tmp_path: Any) -> tuple[str, str]:
    name = repo()
    path = str(tmp_path / "blob")
    digest = write_blob(path, BLOB)
    assert push(f.proxy, name, path) == digest
    return name, digest


def test_a_flood_of_fake_complete_peers_does_not_starve_a_blob(fleet: Callable[..., Fleet], tmp_path: Any) -> None:
    f = fleet(agents=2)
    name, digest = pushed(f, tmp_path)
    info = metainfo(f.tracker_url, name, digest)
    tarpits = [Tarpit(FLOOD) for _ in range(TARPITS)]
    try:
        fakes: dict[str, int] = {}
        for i in range(FAKES):
            port = tarpits[i % TARPITS].port if i % 2 else closed_port(FLOOD)
            peer_id = f"{i:040x}"
            assert announce_fake(f.tracker_url, info, name, port, source=FLOOD, peer_id=peer_id)[0] == 200
            fakes[peer_id] = port

        # The origins holding the blob lead every answer, whatever the flood.
        holders = {f"127.0.0.1:{f.origin_p2p[f.members.index(m)]}" for m in Ring(f.members, 2).placement(
            Digest.parse(digest))}  # fmt: skip
        first = handout(f.tracker_url, info, name)
        assert {f"{p['ip']}:{p['port']}" for p in first[: len(holders)]} == holders
        assert all(p["origin"] for p in first[: len(holders)])

        marks = [f[f"agent-{k}"].mark() for k in range(2)]
        assert run_all([lambda k=k: pull(f.registry(k), name, digest) for k in range(2)]) == [(digest, BLOB)] * 2
    finally:
        for tarpit in tarpits:
            tarpit.close()
    # The agents found fakes unreachable (a refused dial is reported at once) and told the tracker, which
    # stops handing them out.
    reported = set()
    for k, mark in enumerate(marks):
        for line in f[f"agent-{k}"].since(mark):
            m = re.search(r"peer ([0-9a-f]{12}) at \S+ unreachable for " + digest, line)
            if m:
                reported.add(m.group(1))
    reported.discard(PROBE_ID[:12])  # the probe is unreachable too
    assert reported and all(any(p.startswith(r) for p in fakes) for r in reported)
    hidden = f["tracker"].wait_for(rf"peer (?!{PROBE_ID})([0-9a-f]+) of \S+ hidden until", WAIT).group(1)
    assert hidden in fakes
    assert hidden not in {p["peer_id"] for p in handout(f.tracker_url, info, name)}
    # A tarpit was never dialled over and over: each is given up on after a handshake timeout or two.
    assert sum(t.accepted for t in tarpits) <= 2 * 3 * FAKES // 2


def logged(daemon: Any, mark: int, count: int, what: str = "evicting peer") -> list[str]:
    """The lines holding ``what`` that ``daemon`` logged since ``mark``, once there are at least ``count``."""
    while True:
        lines = daemon.since(mark)
        found = [line for line in lines if what in line]
        if len(found) >= count:
            return found
        daemon.wait_for(re.escape(what), WAIT, start=mark + len(lines))


def test_slot_holders_are_evicted_and_a_pull_gets_in(fleet: Callable[..., Fleet], tmp_path: Any) -> None:
    # Shorter bounds than the defaults (5 s grace, 30 s idle), so the test takes seconds, not minutes.
    f = fleet(agents=1, overrides={"origin": {"p2p": {"slot_grace": "1s", "slot_idle": "4s",
                                                       "preemption_interval": "1s"}}})  # fmt: skip
    name, digest = pushed(f, tmp_path)
    info = metainfo(f.tracker_url, name, digest)
    placement = Ring(f.members, 2).placement(Digest.parse(digest))
    holders = [SlotHolder(f.origin_p2p[f.members.index(m)], info, name) for m in placement for _ in range(10)]
    assert all(isinstance(h.answer, wire.Handshake) for h in holders)  # every slot of both origins is taken
    marks = {m: f[f"origin-{f.members.index(m)}"].mark() for m in placement}

    assert pull(f.registry(0), name, digest) == (digest, BLOB)
    # Every holder is evicted (to let the newcomer in, unless a catch-up slot did, then for idleness); each is
    # told BUSY before the close, and each eviction is logged (a holder may see its close before the log line
    # reaches us: wait for the lines).
    for h in holders:
        assert h.closed.wait(WAIT), "a slot holder was never evicted"
    assert all(isinstance(h.last, wire.Error) and h.last.code is wire.ErrorCode.BUSY for h in holders)
    evictions = [line for m, mark in marks.items() for line in logged(f[f"origin-{f.members.index(m)}"], mark, 10)]
    assert len(evictions) == len(holders)

    # From another address, a holder gets at most the per-address share of a blob's slots.
    origin = f.origin_p2p[f.members.index(placement[0])]
    crowd = [SlotHolder(origin, info, name, source="127.0.0.2") for _ in range(6)]
    admitted = [h for h in crowd if isinstance(h.answer, wire.Handshake)]
    assert len(admitted) == 3
    assert all(isinstance(h.answer, wire.Error) and h.answer.code is wire.ErrorCode.BUSY
               for h in crowd if h not in admitted)  # fmt: skip
    for h in crowd:
        h.client.close()
