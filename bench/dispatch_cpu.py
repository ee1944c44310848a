"""The CPU of the piece dispatcher (``kraken/p2p/dispatch.py``) per piece received, inside one process.

    python bench/dispatch_cpu.py [--pieces 64,256,1024] [--peers 20] [--rounds 5] [--before REV]

One agent's ``Dispatcher`` driven through a whole download as the scheduler drives it in a swarm: one origin
with every piece (a longer pipeline) and ``--peers`` agents that start with nothing and each announce a piece
(``HAVE``, after which that peer is asked for what it may give) every time we receive one: with probability
``--useful`` a random piece it lacks, otherwise one we already hold (in a swarm most announcements are of pieces
we have or are fetching, as in bench/simulate.py, and most calls find free slots but nothing to ask). The
oldest outstanding request is answered (``piece_arrived``, ``piece_received``, a new request of the sender)
until the blob is complete. Reported: CPU microseconds per piece received and per ``next_requests`` call (best of
``--rounds``). With ``--before REV`` the same download runs alternately on the ``Dispatcher`` of that git
revision, loaded from ``git show REV:kraken/p2p/dispatch.py``, and the script checks that both made the same
choices (same seed, same requests in the same order).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
import types
from collections import deque
from pathlib import Path
from typing import Any

from kraken.core import Bitfield
from kraken.p2p import dispatch

ROOT = Path(__file__).resolve().parent.parent


def load(rev: str) -> Any:
    """The ``Dispatcher`` class of ``kraken/p2p/dispatch.py`` at git revision ``rev``."""
    source = subprocess.run(
        ["git", "show", f"{rev}:kraken/p2p/dispatch.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType(f"dispatch_{rev}")
    exec(compile(source, f"{rev}:kraken/p2p/dispatch.py", "exec"), module.__dict__)
    return module.Dispatcher


def download(cls: Any, pieces: int, peers: int, useful: float, seed: int) -> tuple[float, int, list[int]]:
    """CPU seconds, ``next_requests`` calls, and every piece requested in order, for one whole download."""
    gen = random.Random(seed)
    d = cls(pieces, Bitfield(pieces), pipeline_limit=3, request_timeout=30.0, rng=random.Random(seed))
    names = [f"agent{n}" for n in range(peers)]
    lacks = {name: set(range(pieces)) for name in names}
    received: list[int] = []
    queue: deque[tuple[str, int]] = deque()
    chosen: list[int] = []
    calls = 0
    start = time.process_time()

    def ask(peer: str) -> None:
        nonlocal calls
        calls += 1
        got = d.next_requests(peer, 0.0)
        chosen.extend(got)
        queue.extend((peer, i) for i in got)

    d.peer_joined("origin", Bitfield.full(pieces), pipeline_limit=8)
    for name in names:
        d.peer_joined(name, Bitfield(pieces))
    ask("origin")
    while queue:
        peer, index = queue.popleft()
        if index in d.outstanding(peer):
            d.piece_arrived(peer, index)
            d.piece_received(peer, index)
            received.append(index)
        ask(peer)
        for name in names:
            new = gen.choice(received) if received and gen.random() >= useful else gen.randrange(pieces)
            if new in lacks[name]:
                lacks[name].discard(new)
                d.peer_has(name, new)
                ask(name)
        if d.complete():
            break
    cpu = time.process_time() - start
    assert d.complete()
    return cpu, calls, chosen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pieces", default="64,256,1024", help="comma-separated piece counts")
    p.add_argument("--peers", type=int, default=20, help="agents beside the origin")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--useful", type=float, default=0.1, help="the share of announcements of a piece we lack")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--before", metavar="REV", help="also run this git revision's Dispatcher, alternated")
    args = p.parse_args()
    impls = {"this tree": dispatch.Dispatcher}
    if args.before:
        impls = {f"before ({args.before})": load(args.before), **impls}
    print(f"origin + {args.peers} agents, {args.useful:.0%} of HAVEs useful; seed {args.seed}; best of {args.rounds}")
    print()
    print("| pieces | dispatcher | calls per piece | us CPU per piece | us CPU per call | same choices |")
    print("|---|---|---|---|---|---|")
    for pieces in (int(n) for n in args.pieces.split(",")):
        best: dict[str, float] = {name: float("inf") for name in impls}
        calls: dict[str, int] = {}
        choices: dict[str, list[int]] = {}
        for _ in range(args.rounds):
            for name, cls in impls.items():
                cpu, calls[name], choices[name] = download(cls, pieces, args.peers, args.useful, args.seed)
                best[name] = min(best[name], cpu)
        reference = next(iter(choices.values()))
        for name in impls:
            same = "yes" if choices[name] == reference else "NO"
            print(
                f"| {pieces} | {name} | {calls[name] / pieces:.1f} | {best[name] / pieces * 1e6:,.0f} "
                f"| {best[name] / calls[name] * 1e6:,.1f} | {same} |"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
