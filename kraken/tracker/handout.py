"""Which peers an announcing agent is told about (Kraken's ``completeness`` policy)."""

from __future__ import annotations

import random
from collections.abc import Iterable

from kraken.core.peer import PeerInfo

DEFAULT_LIMIT = 50


def peer_class(peer: PeerInfo) -> int:
    """0 for a completed agent, 1 for an origin, 2 for an agent still downloading."""
    if peer.origin:
        return 1
    return 0 if peer.complete else 2


def handout(
    peers: Iterable[PeerInfo],
    origins: Iterable[PeerInfo],
    requester_id: str,
    limit: int = DEFAULT_LIMIT,
    rng: random.Random | None = None,
) -> list[PeerInfo]:
    """At most ``limit`` peers for ``requester_id``: completed agents first,
    then ``origins`` (the origins holding the blob), then incomplete agents,
    in a random order within each class. The requester is never included; a
    peer id given twice counts once (an entry in ``origins`` wins)."""
    rng = rng or random.Random()
    chosen: dict[str, PeerInfo] = {}
    for peer in [*origins, *peers]:
        if peer.peer_id != requester_id and peer.peer_id not in chosen:
            chosen[peer.peer_id] = peer
    classes: list[list[PeerInfo]] = [[], [], []]
    for peer in chosen.values():
        classes[peer_class(peer)].append(peer)
    out: list[PeerInfo] = []
    for group in classes:
        rng.shuffle(group)
        out.extend(group)
    return out[: max(0, limit)]
