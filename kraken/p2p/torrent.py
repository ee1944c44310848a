"""The state of one scheduler's torrents, in one place.

A *torrent* is what this daemon knows about one blob in the swarm: its metainfo, the pieces it holds, its peer
connections (at most ``max_conns_per_torrent``), its dial bookkeeping (``Dials``), what it has sent (``Ledger``)
and, while downloading, the partial blob and a ``Dispatcher`` that decides which piece to ask of whom.

Owns: ``Torrent`` and ``Conn`` (one open connection of a torrent), the ``Stats`` counters, and ``Torrents``: the
table of torrents by digest, opening a torrent from the cache to serve a handshake, dropping a torrent (its
connections closed, its announces stopped, its waiters failed), the seeder and leecher TTIs, and the full disk. A
torrent created by a download serves its namespace only; one opened from the cache (which is content-addressed)
answers for the namespace it is asked.

All state lives on the reactor thread.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from kraken.core import Bitfield, Digest, MetaInfo
from kraken.files import OutOfSpace
from kraken.net.histogram import SECONDS, Histograms
from kraken.p2p.config import P2PConfig
from kraken.p2p.dials import Dials
from kraken.p2p.dispatch import Dispatcher
from kraken.p2p.protocol import PeerProtocol
from kraken.p2p.seeding import Ledger
from kraken.p2p.session import PeerSession
from kraken.p2p.traffic import Traffic
from kraken.store import CAStore, PartialBlob

#: Every part of the P2P service logs under the scheduler's name, as operators and the adversarial suite see it.
LOG_NAMESPACE = "kraken.p2p.scheduler.Scheduler"
log = Logger(namespace=LOG_NAMESPACE)


class BlobNotFound(Exception):
    """No origin has the blob (the tracker has no metainfo for it)."""


class DownloadFailed(Exception):
    """The download stalled past the leecher TTI, or the scheduler stopped."""


#: The size classes of ``download_durations``: a blob's class is the first whose bound it does not exceed.
SIZE_CLASSES = ((1 << 20, "1MiB"), (16 << 20, "16MiB"), (256 << 20, "256MiB"), (1 << 30, "1GiB"))


def size_class(length: int) -> str:
    """The ``size_class`` label of a blob of ``length`` bytes: its class's bound, or ``more`` above 1 GiB."""
    for bound, name in SIZE_CLASSES:
        if length <= bound:
            return name
    return "more"


@attrs.frozen
class Stats:
    """Counters of one scheduler since it started (``attrs.asdict`` gives JSON)."""

    bytes_in: int = 0
    bytes_out: int = 0
    pieces_in: int = 0
    pieces_out: int = 0
    pieces_in_from_origins: int = 0
    pieces_in_from_agents: int = 0
    bytes_in_from_origins: int = 0
    bytes_in_from_agents: int = 0
    corrupt_pieces: int = 0
    duplicate_pieces: int = 0  # endgame copies that arrived after the first
    requests_timed_out: int = 0
    requests_refused: int = 0  # answered with ERROR
    requests_declined: int = 0  # pieces this seeder declined to send again (super_seed)
    downloads_completed: int = 0
    peers_unreachable: int = 0  # dialled peers blacklisted for being unreachable
    connections_evicted: int = 0  # connections closed for moving no piece
    torrents: int = 0
    connections: int = 0


@attrs.define(eq=False)
class Conn:
    """One open connection of ``torrent``; ``requests``: the pieces asked of the peer on it."""

    peer_id: str
    protocol: PeerProtocol
    session: PeerSession
    origin: bool
    torrent: Torrent
    requests: dict[int, Deferred[int]] = attrs.field(factory=dict)


@attrs.define(eq=False)
class Torrent:
    namespace: str
    info: MetaInfo
    bitfield: Bitfield
    partial: PartialBlob | None
    dispatcher: Dispatcher | None
    last_active: float
    dials: Dials
    ledger: Ledger
    any_namespace: bool = False  # opened from the cache to serve a handshake: answers for any namespace
    conns: dict[str, Conn] = attrs.field(factory=dict)
    waiters: list[Deferred[str]] = attrs.field(factory=list)
    announce_call: IDelayedCall | None = None
    writing: set[int] = attrs.field(factory=set)  # pieces being checked and written
    installing: bool = False
    installed: list[Deferred[None]] = attrs.field(factory=list)  # readers waiting for the install to end
    closed: bool = False
    traffic: Traffic = attrs.field(factory=Traffic)  # bytes in (by source) and out, for announces
    started: float = 0.0  # when this run opened it (a download's duration counts from here)

    @property
    def complete(self) -> bool:
        return self.partial is None

    def conn_of(self, session: PeerSession) -> Conn | None:
        """The open connection of ``session``, if it is one of this torrent's."""
        if session.remote is None:
            return None
        conn = self.conns.get(session.remote.peer_id.hex())
        return conn if conn is not None and conn.session is session else None


class Download:
    """A download in progress as a reader sees it (``Scheduler.start``): its metainfo, the partial file, each piece
    once it is checked and written, and its end (the whole blob checked and installed, or the download failed)."""

    def __init__(self, torrent: Torrent, path: str) -> None:
        assert torrent.partial is not None
        self._torrent = torrent
        self._path = path
        self.info = torrent.info
        self.data_path = torrent.partial.data_path  # gone once installed: open it before the end

    @property
    def cache_path(self) -> str:
        """Where the blob is once installed."""
        return self._path

    def when_piece(self, index: int) -> Deferred[None]:
        """Fires once piece ``index`` is checked and written; never if the download fails (see ``finished``)."""
        partial, dispatcher = self._torrent.partial, self._torrent.dispatcher
        if partial is None:
            return succeed(None)
        if dispatcher is not None:
            dispatcher.reading(index)  # a reader in order: its window first, with ``stream_window`` set
        return partial.when_piece(index)

    def finished(self) -> Deferred[str]:
        """The cache path once the whole blob's SHA-256 is checked and it is installed; fails with the download
        (``DownloadFailed``, ``OutOfSpace``). Cancelling it stops waiting and leaves the download alone."""
        torrent = self._torrent
        if torrent.complete:
            return succeed(self._path)
        if torrent.closed:  # dropped: its install failed, it stalled, or the scheduler stopped
            return fail(DownloadFailed(f"the download of {torrent.info.digest} was dropped"))
        waiter: Deferred[str] = Deferred(lambda d: torrent.waiters.remove(d) if d in torrent.waiters else None)
        torrent.waiters.append(waiter)
        return waiter


class Torrents:
    """The torrents of one scheduler, by digest, and the counters of its ``Stats``."""

    def __init__(self, config: P2PConfig, *, clock: IReactorTime, store: CAStore) -> None:
        self._config = config
        self._clock = clock
        self._store = store
        self._by_digest: dict[Digest, Torrent] = {}
        self.counts: dict[str, int] = dict.fromkeys(attrs.fields_dict(Stats), 0)
        #: Seconds from opening a download to its blob in the cache, by the blob's size class (``size_class``).
        self.download_durations = Histograms(SECONDS)

    def get(self, digest: Digest) -> Torrent | None:
        return self._by_digest.get(digest)

    def __iter__(self) -> Iterator[Torrent]:
        """The torrents now (a copy: dropping one while iterating is fine)."""
        return iter(list(self._by_digest.values()))

    def stats(self) -> Stats:
        counts = dict(self.counts)
        counts["torrents"] = len(self._by_digest)
        counts["connections"] = sum(len(t.conns) for t in self._by_digest.values())
        return Stats(**counts)

    def add(
        self, namespace: str, info: MetaInfo, partial: PartialBlob | None, dispatcher: Dispatcher | None
    ) -> Torrent:
        """A new torrent of ``info``: downloading into ``partial``, or (None) opened from the cache to serve it."""
        c = self._config
        dials = Dials(
            max_conns=c.max_conns_per_torrent, max_pending=c.max_pending_dials, hold=c.dial_hold,
            busy_backoff=c.busy_backoff, blacklist=c.blacklist, blacklist_max=c.blacklist_max,
        )  # fmt: skip
        ledger = Ledger(info.num_pieces, window=c.request_timeout(info.piece_length))
        bitfield = partial.have if partial is not None else Bitfield.full(info.num_pieces)
        now = self._clock.seconds()
        torrent = Torrent(
            namespace, info, bitfield, partial, dispatcher, now, dials, ledger, partial is None, started=now
        )
        self._by_digest[info.digest] = torrent
        return torrent

    async def serving(self, namespace: str, digest: Digest) -> Torrent | None:
        """The torrent to serve ``digest`` from: in memory, or re-opened from the cache."""
        torrent = self._by_digest.get(digest)
        if torrent is not None:
            return torrent
        info = await self._store.metainfo(digest)
        if info is None:
            return None
        torrent = self._by_digest.get(digest)  # opened meanwhile
        if torrent is None:
            torrent = self.add(namespace, info, None, None)
        return torrent

    def drop(self, torrent: Torrent, error: Exception | None) -> None:
        """Forget the torrent: close its connections, stop announcing, fail its waiters with ``error``."""
        torrent.closed = True
        if self._by_digest.get(torrent.info.digest) is torrent:
            del self._by_digest[torrent.info.digest]
        if torrent.announce_call is not None and torrent.announce_call.active():
            torrent.announce_call.cancel()
        torrent.announce_call = None
        for conn in list(torrent.conns.values()):
            conn.session.close("torrent closed")
        waiters, torrent.waiters = torrent.waiters, []
        for d in waiters:
            d.errback(error or DownloadFailed("the download was dropped"))

    def out_of_space(self, torrent: Torrent, error: BaseException) -> None:
        """The disk is full: fail the download (its waiters get ``OutOfSpace``) and delete its partial blob.
        Nothing is remembered: the next download of it starts afresh."""
        if torrent.closed:
            return  # another piece of it met the full disk first
        digest = torrent.info.digest
        log.warn("no space left to download {digest}: cancelled ({error})", digest=str(digest), error=str(error))
        self.drop(torrent, OutOfSpace(f"downloading {digest}", error))
        ensureDeferred(self._store.downloads.discard(digest)).addErrback(
            lambda f: log.failure("discarding {digest} failed", f, digest=str(digest))
        )

    def expire(self, torrent: Torrent, now: float) -> None:
        """Drop ``torrent`` if it has been idle past its TTI: a seeder's, or a download's (which fails)."""
        idle = now - torrent.last_active
        if torrent.complete and idle > self._config.seeder_tti and not torrent.installing:
            log.debug("dropping idle seeder torrent {digest}", digest=str(torrent.info.digest))
            self.drop(torrent, None)
        elif not torrent.complete and idle > self._config.leecher_tti and not torrent.installing:
            log.warn(
                "download of {digest} stalled for {seconds:.0f} s: cancelled",
                digest=str(torrent.info.digest),
                seconds=idle,
            )
            self.drop(torrent, DownloadFailed(f"no piece of {torrent.info.digest} arrived for {idle:.0f} s"))
            ensureDeferred(self._store.downloads.discard(torrent.info.digest)).addErrback(
                lambda f: log.failure("discarding a stalled download failed", f)
            )
