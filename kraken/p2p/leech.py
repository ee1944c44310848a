"""Downloading: the leech driver, which applies the decisions of the ``Dispatcher`` (``kraken.p2p.dispatch``).

Owns the ingress bucket, the piece buffers and everything between "download this blob" and "it is in the cache":
creating the download torrent (metainfo from the tracker, the partial blob opened, resuming the pieces a previous
run left), asking each connection for the pieces the dispatcher names, receiving them, checking each against its
SHA-256 and writing it (in the store's workers), announcing it (``HAVE``) to the other connections, and, once every
piece is here, checking the whole blob's SHA-256 (a forged metainfo, its pieces made for other bytes, is refused
and its partial blob deleted), moving the blob atomically into the cache, telling the peers (``COMPLETE``) and
waking the callers.

The dispatcher picks pieces rarest first within per-peer pipelines that halve on a timeout and grow back with each
delivery; a request times out only if no byte of its piece has arrived within the request timeout. A request's slot
is given back as soon as its payload has arrived, while the piece is hashed and written in a worker (within
``piece_memory``); piece buffers are reused. The ingress bucket is charged when a payload starts to arrive, and
the connection stops reading until the tokens are there.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kraken.core import Digest, MetaInfo
from kraken.files import is_out_of_space
from kraken.p2p.config import P2PConfig
from kraken.p2p.dispatch import Dispatcher
from kraken.p2p.session import PeerDisconnected, PeerSession, PieceRequestFailed, SessionNotOpen
from kraken.p2p.slots import Slots
from kraken.p2p.torrent import LOG_NAMESPACE, BlobNotFound, Conn, DownloadFailed, Torrent, Torrents, size_class
from kraken.p2p.wire import Chunk, ErrorCode
from kraken.store import BlobCorrupt, CAStore, PieceCorrupt
from kraken.throttle import TokenBucket, Unlimited

log = Logger(namespace=LOG_NAMESPACE)

MetaInfoSource = Callable[[str, Digest], Awaitable[MetaInfo | None]]
"""``(namespace, digest) -> MetaInfo`` or None when no origin has the blob (the tracker client's ``metainfo``)."""


class Leech:
    """Downloads blobs into the store, piece by piece, from the connections of their torrents."""

    def __init__(
        self,
        config: P2PConfig,
        *,
        clock: IReactorTime,
        store: CAStore,
        torrents: Torrents,
        slots: Slots[Conn],
        ingress: TokenBucket | Unlimited,
        rng: random.Random,
        metainfo: MetaInfoSource | None,
        announce: Callable[[Torrent], None],
    ) -> None:
        """``metainfo``: None on an origin, which does not download. ``announce`` announces a torrent to the
        tracker now: a new download, and once more when it is complete."""
        self._config = config
        self._clock = clock
        self._store = store
        self._torrents = torrents
        self._counts = torrents.counts
        self._slots = slots
        self._ingress = ingress
        self._rng = rng
        self._metainfo = metainfo
        self._announce = announce
        self._buffers = _Buffers()

    async def create(self, namespace: str, digest: Digest) -> Torrent:
        """The download torrent of ``digest``: created, its partial blob opened (finished at once if it is whole),
        and announced."""
        if self._metainfo is None:
            raise BlobNotFound(f"{digest} is not here, and an origin does not download")
        info = await self._metainfo(namespace, digest)
        if info is None:
            raise BlobNotFound(f"no origin has {digest}")
        partial = await self._store.downloads.open(info)
        existing = self._torrents.get(digest)
        if existing is not None:
            return existing
        dispatcher = Dispatcher(
            info.num_pieces,
            partial.have,
            pipeline_limit=self._config.pipeline_limit,
            request_timeout=self._config.request_timeout(info.piece_length),
            rng=self._rng,
            stream_window=self._config.stream_window,
        )
        torrent = self._torrents.add(namespace, info, partial, dispatcher)
        log.info(
            "downloading {digest} ({bytes} bytes, {pieces} pieces, {have} on disk)",
            digest=str(digest),
            bytes=info.length,
            pieces=info.num_pieces,
            have=partial.have.count(),
        )
        if partial.complete():
            await self._finish(torrent)
        else:
            self._announce(torrent)
        return torrent

    def close(self) -> None:
        self._ingress.close()

    # --- what the connections say ---------------------------------------------------------------------------

    def joined(self, torrent: Torrent, conn: Conn) -> None:
        if torrent.dispatcher is not None:
            limit = self._config.origin_pipeline_limit if conn.origin else self._config.pipeline_limit
            torrent.dispatcher.peer_joined(conn.peer_id, conn.session.remote_bitfield, pipeline_limit=limit)
            self._request_more(torrent, conn)

    def left(self, torrent: Torrent, conn: Conn) -> None:
        if torrent.dispatcher is not None:
            torrent.dispatcher.peer_left(conn.peer_id)
            self._request_all(torrent)  # its pieces are back in the pool

    def peer_has(self, torrent: Torrent, session: PeerSession, index: int) -> None:
        conn = torrent.conn_of(session)
        if conn is not None and torrent.dispatcher is not None:
            torrent.dispatcher.peer_has(conn.peer_id, index)
            self._request_more(torrent, conn)

    def peer_complete(self, torrent: Torrent, session: PeerSession) -> None:
        conn = torrent.conn_of(session)
        if conn is None:
            return
        if torrent.complete:
            session.close("both sides are complete")
        elif torrent.dispatcher is not None:
            torrent.dispatcher.peer_complete(conn.peer_id)
            self._request_more(torrent, conn)

    def busy(self, torrent: Torrent) -> set[Conn]:
        """Connections of ``torrent`` this side waits on for a piece."""
        return {conn for conn in torrent.conns.values() if conn.requests}

    # --- requesting and receiving ---------------------------------------------------------------------------

    def _request_more(self, torrent: Torrent, conn: Conn) -> None:
        dispatcher = torrent.dispatcher
        if dispatcher is None or torrent.conns.get(conn.peer_id) is not conn:
            return
        for index in dispatcher.next_requests(conn.peer_id, self._clock.seconds()):
            Deferred.fromCoroutine(self._fetch(torrent, conn, index)).addErrback(
                lambda f: log.failure("fetching a piece failed", f)
            )

    def _request_all(self, torrent: Torrent) -> None:
        for conn in list(torrent.conns.values()):
            self._request_more(torrent, conn)

    async def _fetch(self, torrent: Torrent, conn: Conn, index: int) -> None:
        sink = await self._receive(torrent, conn, index)
        if sink is None:
            return
        dispatcher = torrent.dispatcher
        assert dispatcher is not None
        if index in torrent.writing or torrent.bitfield[index]:
            self._counts["duplicate_pieces"] += 1
            sink.done()
            return  # an endgame duplicate: the first copy is being (or was) written; it frees this request too
        if not await self._write(torrent, conn, index, sink):
            return
        if dispatcher.complete():
            if not torrent.installing:
                await self._finish(torrent)
        else:
            self._request_all(torrent)  # this peer's slot, and those of peers whose copy was a duplicate

    async def _receive(self, torrent: Torrent, conn: Conn, index: int) -> _PieceSink | None:
        """Ask ``conn`` for piece ``index`` and wait for its payload and its ingress tokens; None if it did not
        come (the dispatcher has heard why)."""
        dispatcher = torrent.dispatcher
        assert dispatcher is not None
        clock = self._clock.seconds if self._config.piece_log else None  # the piece's times, for its log line
        sink = _PieceSink(torrent.info.piece_size(index), self._ingress, conn.protocol.transport, self._buffers, clock)
        try:
            if torrent.conns.get(conn.peer_id) is not conn or index not in dispatcher.outstanding(conn.peer_id):
                return None  # gone meanwhile
            request = conn.session.request_piece(index, sink.write)
            conn.requests[index] = request
            try:
                await request
            finally:
                conn.requests.pop(index, None)
            sink.stamp()  # its last byte
            await sink.granted()
        except CancelledError:
            sink.release()
            return None  # another peer delivered it first, or the scheduler stopped
        except (PeerDisconnected, SessionNotOpen):
            sink.release()
            return None  # peer_left gave its requests back
        except (PieceRequestFailed, TimeoutError) as e:
            sink.release()
            self._failed(torrent, conn, index, e)
            return None
        return sink

    def _failed(self, torrent: Torrent, conn: Conn, index: int, e: PieceRequestFailed | TimeoutError) -> None:
        """A request timed out, or the peer answered it with ``ERROR``."""
        assert torrent.dispatcher is not None
        now = self._clock.seconds()
        timed_out = not isinstance(e, PieceRequestFailed)
        self._counts["requests_timed_out" if timed_out else "requests_refused"] += 1
        if timed_out:
            until = now + self._config.request_timeout(torrent.info.piece_length)
        elif isinstance(e, PieceRequestFailed) and e.code is ErrorCode.PIECE_UNAVAILABLE:  # ask again later
            until = now + self._config.request_timeout(torrent.info.piece_length) / 4
        else:
            until = float("inf")
        torrent.dispatcher.piece_failed(conn.peer_id, index, until=until, slow=timed_out)
        log.debug("piece {piece} from {peer}: {error}", piece=index, peer=conn.peer_id[:12], error=str(e))
        self._request_all(torrent)

    async def _write(self, torrent: Torrent, conn: Conn, index: int, sink: _PieceSink) -> bool:
        """Check piece ``index`` and write it; then cancel the other requests for it and announce it. False if
        it was not written (corrupt, or the disk failed)."""
        dispatcher, partial = torrent.dispatcher, torrent.partial
        assert dispatcher is not None and partial is not None
        size = torrent.info.piece_size(index)
        torrent.writing.add(index)
        if self._buffers.checking + size <= self._config.piece_memory:
            # Its slot is free while the piece is checked and written, unless too many pieces wait for that.
            dispatcher.piece_arrived(conn.peer_id, index)
            self._request_more(torrent, conn)
        self._buffers.checking += size
        try:
            written = await partial.write_piece(index, sink.data())
        except PieceCorrupt:
            self._counts["corrupt_pieces"] += 1
            dispatcher.piece_failed(conn.peer_id, index)
            conn.session.close(f"piece {index} does not match its SHA-256", violation=True)
            return False
        except Exception as e:
            if is_out_of_space(e) or torrent.closed:
                self._torrents.out_of_space(torrent, e)  # a no-op once the torrent is closed
                return False
            log.failure("writing piece {piece} of {digest} failed", piece=index, digest=str(torrent.info.digest))
            dispatcher.piece_failed(conn.peer_id, index, until=self._clock.seconds() + self._config.blacklist)
            self._request_all(torrent)
            return False
        finally:
            torrent.writing.discard(index)
            self._buffers.checking -= size
            sink.done()
        for other in dispatcher.piece_received(conn.peer_id, index):
            pending = torrent.conns[other].requests.get(index) if other in torrent.conns else None
            if pending is not None:
                pending.cancel()
        if written:
            self._piece_arrived(torrent, conn, index, size)
            if self._config.piece_log:
                self._log_piece(torrent, conn, index, sink.times)
        return True

    def _log_piece(self, torrent: Torrent, conn: Conn, index: int, times: list[float]) -> None:
        """``p2p.piece_log``: when piece ``index`` was asked for, its first and last byte came, it was written."""
        asked, first, last = times[0], times[1], times[-1]  # an empty piece has no first byte: its last stands in
        log.info(
            "piece {index} of {digest} from {peer}{role}: asked {asked:.3f} first byte {first:.3f} "
            "last byte {last:.3f} written {written:.3f}",
            index=index, digest=str(torrent.info.digest), peer=conn.peer_id, role=" (origin)" if conn.origin else "",
            asked=asked, first=first, last=last, written=self._clock.seconds(),
        )  # fmt: skip

    def _piece_arrived(self, torrent: Torrent, conn: Conn, index: int, size: int) -> None:
        torrent.last_active = self._clock.seconds()
        self._slots.progress(conn, torrent.last_active)
        source = "origins" if conn.origin else "agents"
        for key, amount in (
            ("pieces_in", 1),
            ("bytes_in", size),
            (f"pieces_in_from_{source}", 1),
            (f"bytes_in_from_{source}", size),
        ):
            self._counts[key] += amount
        torrent.traffic.received(conn.peer_id, size, conn.origin)
        for other in torrent.conns.values():
            if other is not conn:
                other.session.send_have(index)
        have, pieces = torrent.bitfield.count(), torrent.info.num_pieces
        if have < pieces and have * 4 // pieces > (have - 1) * 4 // pieces:  # a quarter more is on disk
            log.info(
                "download of {digest}: {have} of {pieces} pieces",
                digest=str(torrent.info.digest),
                have=have,
                pieces=pieces,
            )

    # --- finishing ------------------------------------------------------------------------------------------

    async def _finish(self, torrent: Torrent) -> None:
        """Every piece is here: move the blob into the cache, tell the peers and the tracker, wake the waiters."""
        assert torrent.partial is not None
        torrent.installing = True
        try:
            await self._store.downloads.finish(torrent.partial)
        except CancelledError:
            raise
        except BlobCorrupt as e:
            log.error("refusing to install {digest}: {error}", digest=str(torrent.info.digest), error=str(e))
            self._torrents.drop(torrent, DownloadFailed(str(e)))
            return
        except Exception as e:
            if is_out_of_space(e):
                self._torrents.out_of_space(torrent, e)
                return
            log.failure("installing {digest} failed", digest=str(torrent.info.digest))
            self._torrents.drop(torrent, DownloadFailed(f"installing {torrent.info.digest} failed: {e}"))
            return
        finally:
            torrent.installing = False
            readers, torrent.installed = torrent.installed, []
            for d in readers:
                d.callback(None)
        torrent.partial = None
        torrent.dispatcher = None
        torrent.last_active = self._clock.seconds()
        self._counts["downloads_completed"] += 1
        self._torrents.download_durations.observe(
            (size_class(torrent.info.length),), torrent.last_active - torrent.started
        )
        log.info("downloaded {digest}", digest=str(torrent.info.digest))
        for conn in list(torrent.conns.values()):
            for request in list(conn.requests.values()):
                request.cancel()
            if conn.session.remote_bitfield.complete():
                conn.session.close("both sides are complete")
            else:
                conn.session.send_complete()
        downloads, torrent.waiters = torrent.waiters, []
        path = self._store.blob_path(torrent.info.digest)
        for waiter in downloads:
            waiter.callback(path)
        self._announce(torrent)


class _PieceSink:
    """Receives one piece's payload into a buffer of the piece's size, allocated when the first byte arrives.

    The first byte also reserves the piece's size in the ingress bucket. Until the tokens are granted the
    connection stops reading (``pauseProducing``), so a capped daemon takes bytes off the wire at its rate, and
    the piece is not used (nor the next one asked for on that slot) before ``granted`` fires.
    """

    def __init__(
        self,
        size: int,
        bucket: TokenBucket | Unlimited,
        transport: object,
        buffers: _Buffers,
        clock: Callable[[], float] | None,
    ) -> None:
        self._size = size
        self._bucket = bucket
        self._transport = transport
        self._buffers = buffers
        self._clock = clock
        self._buf: bytearray | None = None
        self._pos = 0
        self._reservation: Deferred[None] | None = None
        #: With a ``clock`` (``p2p.piece_log``): when the piece was asked for, then its first and last byte came.
        self.times: list[float] = []
        self.stamp()

    def write(self, chunk: Chunk) -> None:
        if self._buf is None:
            self.stamp()
            self._buf = self._buffers.take(self._size)
            self._reserve()
        end = self._pos + len(chunk)
        self._buf[self._pos : end] = chunk
        self._pos = end

    def stamp(self) -> None:
        if self._clock is not None:
            self.times.append(self._clock())

    def _reserve(self) -> Deferred[None]:
        if self._reservation is None:
            self._reservation = self._bucket.reserve(self._size)
            if not self._reservation.called and hasattr(self._transport, "pauseProducing"):
                self._transport.pauseProducing()
                self._reservation.addBoth(self._resume)
        return self._reservation

    def _resume(self, result: object) -> object:
        if hasattr(self._transport, "resumeProducing"):
            self._transport.resumeProducing()
        return result

    async def granted(self) -> None:
        """Wait for the ingress tokens of this piece."""
        reservation = self._reserve()
        if not reservation.called:
            mine: Deferred[None] = Deferred()

            def relay(result: object) -> None:
                mine.callback(None)  # a failed reservation (the bucket closed at shutdown) is not an error here

            reservation.addBoth(relay)
            await mine

    def done(self) -> None:
        """The piece is written (or thrown away): its buffer may be reused."""
        if self._buf is not None:
            self._buffers.give(self._buf)
            self._buf = None

    def release(self) -> None:
        """The piece did not arrive: give its buffer and its tokens back (or stop waiting for the tokens)."""
        self.done()
        if self._reservation is None:
            return
        if self._reservation.called:
            self._bucket.refund(self._size)
        else:
            self._reservation.cancel()
            self._reservation.addErrback(lambda f: f.trap(CancelledError))

    def data(self) -> bytes | bytearray:
        return self._buf if self._buf is not None else b""


class _Buffers:
    """Piece buffers, reused rather than allocated for every piece (MiB-sized allocations freed at a high rate
    make the heap grow), and the bytes of the pieces being checked and written, which ``piece_memory`` bounds."""

    KEEP = 4  # free buffers kept per size

    def __init__(self) -> None:
        self.checking = 0
        self._free: dict[int, list[bytearray]] = {}

    def take(self, size: int) -> bytearray:
        free = self._free.get(size)
        return free.pop() if free else bytearray(size)

    def give(self, buf: bytearray) -> None:
        free = self._free.setdefault(len(buf), [])
        if len(free) < self.KEEP:
            free.append(buf)
