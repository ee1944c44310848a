"""The peers of one blob as the in-memory peer store keeps them.

Every structure here exists so that an announce and a lookup cost the same
however many peers a blob has: lists to sample from (swap-removal keeps
each element's slot), ordered dicts for "least recently seen" and "hidden
the longest", and no step that looks at every peer.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from kraken.core.peer import PeerInfo
from kraken.tracker.unreachable import Reports


class Entry:
    """One peer of one blob: the latest announce, when it came, the group of
    its announcing address, its slot in that group's list of seeders or
    leechers (-1 while hidden), the reports of it being unreachable
    (None while there are none), and its latest ``progress`` (None until it
    reports one: ``kraken.tracker.progress``)."""

    __slots__ = ("group", "peer", "progress", "reports", "seen", "slot")

    def __init__(self, peer: PeerInfo, seen: float, group: Group) -> None:
        self.peer = peer
        self.seen = seen
        self.group = group
        self.slot = -1
        self.reports: Reports | None = None
        self.progress: dict[str, Any] | None = None


class Group:
    """The peers one source address announced for one blob: all of them from
    the least to the most recently seen (for the bound per address), and the
    ones that may be handed out as two plain lists to sample from.
    ``shown_slot`` and ``seed_slot`` are its places in the swarm's lists of
    groups (-1 when not in them); ``warned`` that its bound was logged."""

    __slots__ = ("entries", "key", "leechers", "seed_slot", "seeders", "shown_slot", "warned")

    def __init__(self, key: str) -> None:
        self.key = key
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.seeders: list[PeerInfo] = []
        self.leechers: list[PeerInfo] = []
        self.shown_slot = -1
        self.seed_slot = -1
        self.warned = False


def _put(groups: list[Group], group: Group, attr: str) -> None:
    setattr(group, attr, len(groups))
    groups.append(group)


def _take(groups: list[Group], group: Group, attr: str) -> None:
    """Take ``group`` out of ``groups``: the last group takes its slot."""
    slot = getattr(group, attr)
    last = groups.pop()
    if slot < len(groups):
        groups[slot] = last
        setattr(last, attr, slot)
    setattr(group, attr, -1)


class Swarm:
    """The peers of one blob: by peer id from the least to the most recently
    seen (for expiry and eviction); by announcing address (``groups``), with
    the groups that have a peer to hand out (``shown``) and those that have a
    seeder to hand out (``seeding``) as plain lists to sample from; and the
    hidden peers, in the order they come back in. ``digest`` is the blob's,
    once a peer has reported its progress (announces without one name only
    the info hash to the store)."""

    __slots__ = ("digest", "entries", "groups", "hidden", "seeding", "shown")

    def __init__(self) -> None:
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.groups: dict[str, Group] = {}
        self.shown: list[Group] = []
        self.seeding: list[Group] = []
        self.hidden: OrderedDict[str, Entry] = OrderedDict()
        self.digest: str | None = None

    def add(self, peer: PeerInfo, now: float, key: str) -> Entry:
        """A new entry for ``peer``, announced from ``key``, handed out from now on."""
        entry = self.entries[peer.peer_id] = Entry(peer, now, self._group(key))
        entry.group.entries[peer.peer_id] = entry
        self.show(entry)
        return entry

    def move(self, entry: Entry, key: str) -> None:
        """``entry`` was announced from another address: it joins that address's group."""
        shown = entry.slot >= 0
        if shown:
            self.unshow(entry)
        self._leave_group(entry)
        entry.group = self._group(key)
        entry.group.entries[entry.peer.peer_id] = entry
        if shown:
            self.show(entry)

    def replace(self, entry: Entry, peer: PeerInfo) -> None:
        """The entry's peer completed, or moved to another ip or port."""
        if entry.slot >= 0:
            self.unshow(entry)
            entry.peer = peer
            self.show(entry)
        else:
            entry.peer = peer

    def drop(self, entry: Entry) -> None:
        """Forget ``entry`` altogether."""
        self.entries.pop(entry.peer.peer_id, None)
        if entry.slot >= 0:
            self.unshow(entry)
        else:
            self.hidden.pop(entry.peer.peer_id, None)
        self._leave_group(entry)

    def drop_oldest(self) -> Entry:
        entry = next(iter(self.entries.values()))
        self.drop(entry)
        return entry

    def hide(self, entry: Entry) -> None:
        """Stop handing ``entry`` out until its reports let it back (``unhide``)."""
        if entry.slot >= 0:
            self.unshow(entry)
        self.hidden[entry.peer.peer_id] = entry
        self.hidden.move_to_end(entry.peer.peer_id)

    def unhide(self, now: float) -> None:
        """Hand out again the hidden peers whose time is up (they are in that order)."""
        hidden = self.hidden
        while hidden:
            entry = next(iter(hidden.values()))
            if entry.reports is not None and entry.reports.hidden(now):
                break
            hidden.popitem(last=False)
            self.show(entry)

    def show(self, entry: Entry) -> None:
        group = entry.group
        if not group.seeders and not group.leechers:
            _put(self.shown, group, "shown_slot")
        if entry.peer.complete:
            if not group.seeders:
                _put(self.seeding, group, "seed_slot")
            peers = group.seeders
        else:
            peers = group.leechers
        entry.slot = len(peers)
        peers.append(entry.peer)

    def unshow(self, entry: Entry) -> None:
        """Take ``entry`` out of its group's list: the list's last peer takes its slot."""
        group = entry.group
        peers = group.seeders if entry.peer.complete else group.leechers
        last = peers.pop()
        if entry.slot < len(peers):
            peers[entry.slot] = last
            group.entries[last.peer_id].slot = entry.slot
        entry.slot = -1
        if entry.peer.complete and not peers:
            _take(self.seeding, group, "seed_slot")
        if not group.seeders and not group.leechers:
            _take(self.shown, group, "shown_slot")

    def _group(self, key: str) -> Group:
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group(key)
        return group

    def _leave_group(self, entry: Entry) -> None:
        group = entry.group
        del group.entries[entry.peer.peer_id]
        if not group.entries:
            del self.groups[group.key]
