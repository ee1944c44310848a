"""P2P over mutual TLS: an origin's scheduler and an agent's, on real TLS sockets on loopback."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import pytest_twisted
import trustme
from tls_files import write_ca, write_pair
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import globalLogPublisher

from kraken.core import MetaInfo, PieceLengthRule
from kraken.core.peer import PeerInfo
from kraken.net import TLSConfig, TLSContexts
from kraken.net.server import port_address
from kraken.p2p.announce import connect_tcp
from kraken.p2p.config import BandwidthConfig, P2PConfig
from kraken.p2p.scheduler import Scheduler
from kraken.p2p.torrent import DownloadFailed
from kraken.store import CAStore
from kraken.workers import InlineWorker

PIECE = 1 << 14
NAMESPACE = "library/test"


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class Recording:
    """Wraps a factory: a Deferred per connection, fired once it is lost (so the test ends with none open)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lost: list[Deferred[None]] = []
        self.protocols: list[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self.inner.buildProtocol(addr)
        if protocol is None:
            return None
        done: Deferred[None] = Deferred()
        original = protocol.connectionLost

        def lost(reason: Any) -> None:
            try:
                original(reason)
            finally:
                done.callback(None)

        protocol.connectionLost = lost
        self.lost.append(done)
        self.protocols.append(protocol)
        return protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def contexts(tmp_path, ca: trustme.CA, signer: trustme.CA, name: str) -> TLSContexts:
    cert, key = write_pair(tmp_path / name, signer, name)
    bundle = tmp_path / name / "bundle.crt"
    bundle.write_bytes(ca.cert_pem.bytes() + signer.cert_pem.bytes())
    return TLSContexts(TLSConfig(ca=str(bundle), cert=cert, key=key, client_ca=write_ca(tmp_path / name, ca)))


class Pair:
    """An origin seeding one blob behind a TLS P2P listener, and an agent whose tracker hands the origin out."""

    def __init__(self, reactor: Any, tmp_path: Any, origin_tls: TLSContexts, agent_tls: TLSContexts) -> None:
        self.reactor = reactor
        data = hashlib.sha256(b"blob").digest() * (5 * PIECE // 32 + 7)
        self.data, self.info = data, MetaInfo.from_bytes(data, PIECE)
        config = P2PConfig(
            listen="tcp:0:interface=127.0.0.1", advertise="127.0.0.1:1", tls=True, bandwidth=BandwidthConfig(False)
        )
        self.origin = Scheduler(
            config, reactor=reactor, store=self._store(tmp_path / "origin"), peer_id="a" * 40, tls=origin_tls
        )
        self.dials = Recording(None)

        def connect(peer: PeerInfo, factory: Any) -> Any:
            self.dials.inner = factory
            return connect_tcp(reactor, peer, self.dials, timeout=5.0, tls=agent_tls)

        self.agent = Scheduler(
            config,
            reactor=reactor,
            store=self._store(tmp_path / "agent"),
            metainfo=self._metainfo,
            announcer=self._announce,
            peer_id="b" * 40,
            connect=connect,
        )
        self.listener = self.origin.listener(reactor, "origin P2P")
        self.accepted = Recording(self.listener.factory.wrappedFactory)
        self.listener.factory.wrappedFactory = self.accepted
        self.origin_peer: PeerInfo | None = None

    def _store(self, root: Any) -> CAStore:
        rule = PieceLengthRule(((0, PIECE),))
        return CAStore(str(root), worker=InlineWorker(), piece_rule=rule, now=self.reactor.seconds)

    async def _metainfo(self, namespace: str, digest: Any) -> MetaInfo:
        return self.info

    async def _announce(self, me: PeerInfo, *args: Any, unreachable: Any = ()) -> tuple[list[PeerInfo], float]:
        assert self.origin_peer is not None
        return [self.origin_peer], 60.0

    async def start(self) -> None:
        store = self.origin._store
        partial = await store.downloads.open(self.info)
        for i in range(self.info.num_pieces):
            await partial.write_piece(i, self.data[self.info.piece_offset(i) :][: self.info.piece_size(i)])
        await store.downloads.finish(partial)
        self.origin.startService()
        self.agent.startService()
        self.listener.startService()
        port = await self.listener._waitingForPort
        host, number = port_address(port).rsplit(":", 1)
        self.origin_peer = PeerInfo("a" * 40, host, int(number), complete=True, origin=True)

    async def stop(self) -> None:
        self.agent.stopService()
        self.origin.stopService()
        for protocol in self.dials.protocols + self.accepted.protocols:
            if protocol.transport is not None:
                protocol.transport.loseConnection()
        await gatherResults(self.dials.lost + self.accepted.lost)
        await self.listener.stopService()


@pytest_twisted.ensureDeferred
async def test_an_agent_downloads_from_an_origin_over_mutual_tls(reactor, tmp_path):
    ca = trustme.CA()
    pair = Pair(reactor, tmp_path, contexts(tmp_path, ca, ca, "origin"), contexts(tmp_path, ca, ca, "agent"))
    await pair.start()
    try:
        path = await pair.agent.download(NAMESPACE, pair.info.digest)
        assert read(path) == pair.data
        assert pair.dials.protocols and pair.accepted.protocols
    finally:
        await pair.stop()


@pytest_twisted.ensureDeferred
async def test_a_peer_with_a_certificate_from_another_ca_gets_nothing(reactor, tmp_path):
    ca = trustme.CA()
    rogue = contexts(tmp_path, ca, trustme.CA(), "rogue")  # trusts the cluster CA, its own cert is not from it
    pair = Pair(reactor, tmp_path, contexts(tmp_path, ca, ca, "origin"), rogue)
    refused: Deferred[str] = Deferred()
    errors: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_format", "").startswith("TLS handshake with") and len(errors) == 0:
            errors.append(event["error"])
            # Resumed in a later turn, not inside the TLS layer's connectionLost that logs it.
            reactor.callLater(0, refused.callback, event["error"])

    globalLogPublisher.addObserver(observe)
    await pair.start()
    download = Deferred.fromCoroutine(pair.agent.download(NAMESPACE, pair.info.digest))
    try:
        assert await refused == "certificate verify failed"
        assert not download.called
    finally:
        globalLogPublisher.removeObserver(observe)
        await pair.stop()
    with pytest.raises(DownloadFailed):
        await download
