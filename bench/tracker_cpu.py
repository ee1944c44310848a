"""Tracker CPU per announce, in one process: less sensitive to a busy machine than bench/tracker_load.py.

    python bench/tracker_cpu.py [--tls off|on|both] [--metrics on|off|both] [--reps 25] [--announces 2000]
        [--progress] [--lean on|off|both]

The tracker's real Site (``make_site`` over ``TrackerHTTP`` and a ``MemoryPeerStore``; plain, or behind Twisted's
TLS layer with mutual TLS from a trustme CA) is fed the announces of bench/tracker_load.py (10,000 peers over 100
blobs, one origin seeding each) by an in-memory client on one keep-alive connection. Only the server's work is
timed (thread CPU time around its ``dataReceived`` and the reactor's due calls, such as the TLS layer's flush of
an answer), so the figure leaves out the sockets and the poll loop, and the client's work. Each of ``--reps``
rounds times ``--announces`` announces; the best and the median round are given as CPU-seconds per 10,000
announces. To compare two trees, run this alternately with ``PYTHONPATH`` on each, a few times. ``--progress``
adds to every announce a ``progress`` object with ten sources (what agents send with ``p2p.announce_progress``
for the live swarm page), to compare with a run without it. ``--lean`` (default ``on``) is the lean announce
path (``kraken.tracker.lean``, which the tracker uses unless its access log is on); ``off`` is twisted.web alone,
``both`` the two side by side, alternating rounds, with the lean path's cost as a fraction of twisted.web's.

``--metrics`` (default ``on``) is the cost of the metrics (docs/operations.md section 17): ``on`` is the Site
wrapped as ``kraken.tracker.tap`` wraps it (``/metrics``, each request counted and timed, the handout
sizes' histogram); ``off`` is the ``TrackerHTTP`` resource behind ``/stats`` (which predates the metrics),
with the handout histogram replaced by a no-op (its two handout counters, two integer additions, stay).
``both`` measures the two side by side in one run, alternating rounds, and gives the cost of ``on`` over
``off`` in percent (goal: within 5 %). Announces per second on one core are 10,000 divided by the CPU-seconds
given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import trustme
from OpenSSL import SSL, crypto
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.server import Site

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kraken.core.peer import PeerInfo
from kraken.net.metrics import Observation, new_registry, observed
from kraken.net.server import make_site
from kraken.tracker.http import TrackerHTTP
from kraken.tracker.lean import lean_announces
from kraken.tracker.origins import OriginPeers
from kraken.tracker.peers import MemoryPeerStore
from kraken.tracker.stats import register_tracker, with_stats

PEERS, BLOBS = 10_000, 100
ORIGIN = [PeerInfo("f" * 40, "10.9.9.9", 15000, complete=True, origin=True)]


class _Origin:
    """The origin's answer to ``OriginPeers`` (which the tracker asks through its cache, as in the daemon)."""

    async def peers(self, digest: object) -> list[PeerInfo]:
        return ORIGIN


class _Transport(StringTransport):
    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


def progress(k: int) -> dict[str, object]:
    """A typical ``progress`` of an agent halfway through a 1 GiB blob, with ten sources."""
    sources = [{"peer_id": f"{k + s:040x}", "origin": s == 0, "bytes": 50 << 20, "rate": 12.5e6} for s in range(10)]
    return {"have": 128, "pieces": 256, "bytes_in": 500 << 20, "bytes_out": 300 << 20, "rate_in": 125e6,
            "rate_out": 75e6, "sources": sources}  # fmt: skip


def requests(with_progress: bool = False) -> list[bytes]:
    out = []
    for k in range(PEERS):
        digest, info_hash = f"sha256:{k % BLOBS:064x}", f"{k % BLOBS:064x}"
        doc: dict[str, object] = {
            "peer_id": f"{k:040x}", "ip": f"10.0.{k >> 8 & 255}.{k & 255}", "port": 16001,
            "namespace": "bench/tracker", "digest": digest, "info_hash": info_hash, "complete": False,
        }  # fmt: skip
        if with_progress:
            doc["progress"] = progress(k)
        body = json.dumps(doc, separators=(",", ":")).encode()
        head = b"POST /announce HTTP/1.1\r\nHost: tracker\r\nContent-Type: application/json\r\n"
        out.append(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return out


def _pem(blob: trustme.Blob, load: Callable[[int, bytes], object]) -> object:
    return load(crypto.FILETYPE_PEM, blob.bytes())


class _NoHistogram:
    def observe(self, value: float) -> None:
        pass


def tracker_site(metrics: bool, lean: bool = True) -> Site:
    """A fresh tracker's Site: with its metrics as ``kraken.tracker.tap`` wires them, or without; ``lean``: with
    the lean path for announces (``kraken.tracker.lean``), as the tap wires it without the access log."""
    store = MemoryPeerStore(3600.0, reactor)
    app = TrackerHTTP(
        store, None, clock=reactor, announce_interval=3.0, max_peers=50,  # type: ignore[arg-type]
        origin_peers=OriginPeers(_Origin(), clock=reactor),  # type: ignore[arg-type]
    )  # fmt: skip
    if not metrics:
        app.handout_sizes = _NoHistogram()  # type: ignore[assignment]
        site = make_site(with_stats(app.resource(), store), reactor=reactor, access_log=False)  # /stats: not metrics
        return lean_announces(site, app, None) if lean else site
    registry = new_registry()
    register_tracker(registry, store, app)
    observation = Observation(registry, {}, clock=reactor, exact=frozenset({"/announce"}))
    site = make_site(observed(with_stats(app.resource(), store), observation), reactor=reactor, access_log=False)
    return lean_announces(site, app, observation.requests) if lean else site


def connect(tls: bool, metrics: bool = True, lean: bool = True) -> tuple[Callable[[bytes], None], Callable[[], bytes]]:
    """A server connection of a fresh tracker: (feed it client bytes, take the plaintext it answered)."""
    site = tracker_site(metrics, lean)
    addr = IPv4Address("TCP", "127.0.0.1", 40000)
    transport = _Transport(peerAddress=addr)
    if not tls:
        server = site.buildProtocol(addr)
        server.makeConnection(transport)

        def take_plain() -> bytes:
            out = transport.value()
            transport.clear()
            return out

        return server.dataReceived, take_plain
    ca = trustme.CA()
    key, cert = ca.issue_cert("127.0.0.1"), ca.issue_cert("client")
    options = CertificateOptions(
        privateKey=_pem(key.private_key_pem, crypto.load_privatekey),
        certificate=_pem(key.cert_chain_pems[0], crypto.load_certificate),
        verify=True, caCerts=[_pem(ca.cert_pem, crypto.load_certificate)], requireCertificate=True,
    )  # fmt: skip
    server = TLSMemoryBIOFactory(options, False, site).buildProtocol(addr)
    server.makeConnection(transport)
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.use_certificate(_pem(cert.cert_chain_pems[0], crypto.load_certificate))
    context.use_privatekey(_pem(cert.private_key_pem, crypto.load_privatekey))
    client = SSL.Connection(context, None)
    client.set_connect_state()

    def to_client() -> None:
        back = transport.value()
        transport.clear()
        if back:
            client.bio_write(back)

    for _ in range(10):  # the handshake
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        try:
            server.dataReceived(client.bio_read(65536))
        except SSL.WantReadError:
            pass
        to_client()

    def feed(data: bytes) -> None:
        client.send(data)
        server.dataReceived(client.bio_read(65536))

    def take() -> bytes:
        to_client()
        got = b""
        while True:
            try:
                got += client.recv(65536)
            except SSL.WantReadError:
                return got

    return feed, take


class Session:
    """One connection of a fresh tracker, every peer announced once (``prefill``); ``round(n)`` times ``n``
    more announces: CPU-seconds per 10,000."""

    def __init__(self, tls: bool, metrics: bool, with_progress: bool = False, lean: bool = True) -> None:
        self._feed, self._take = connect(tls, metrics, lean)
        self._wire = requests(with_progress)
        self._next = 0
        self._spent = 0.0
        if self._run(PEERS) < PEERS - 2:
            raise RuntimeError("the prefill was not answered 200")

    def _run(self, n: int) -> int:
        ok = 0
        for _ in range(n):
            self._timed_feed(self._wire[self._next % len(self._wire)])
            self._next += 1
            ok += self._take().count(b"HTTP/1.1 200 OK")
        return ok

    def _timed_feed(self, data: bytes) -> None:
        """The server's part only (with TLS, the client's encryption in ``feed`` is in it: a small share)."""
        start = time.thread_time()
        self._feed(data)
        reactor.runUntilCurrent()  # type: ignore[attr-defined]
        self._spent += time.thread_time() - start

    def round(self, n: int) -> float:
        self._spent = 0.0
        self._run(n)
        return self._spent / n * 10_000


Setting = tuple[bool, bool]  # (metrics, lean)


def measure(
    tls: bool, reps: int, announces: int, settings: list[Setting], with_progress: bool = False
) -> dict[Setting, list[float]]:
    """CPU-seconds per 10,000 announces of each round, per (metrics, lean) setting; with several settings, their
    rounds alternate (so a busy machine weighs on all alike)."""
    sessions = {s: Session(tls, s[0], with_progress, s[1]) for s in settings}
    rounds: dict[Setting, list[float]] = {s: [] for s in settings}
    for _ in range(reps):
        for s, session in sessions.items():
            rounds[s].append(session.round(announces))
    return rounds


def _compare(by_setting: dict[Setting, list[float]], tls: bool, lean: tuple[bool, ...]) -> None:
    name = "mutual TLS" if tls else "plain"
    medians = {s: statistics.median(r) for s, r in by_setting.items()}
    for s in by_setting:
        metrics, is_lean = s
        if metrics and (False, is_lean) in medians:
            on, off = medians[s], medians[(False, is_lean)]
            print(f"{name}: metrics cost {100 * (on - off) / off:+.1f} % (medians)")
        if is_lean and len(lean) == 2:
            new, old = medians[s], medians[(metrics, False)]
            best = min(by_setting[s]) / min(by_setting[(metrics, False)])
            print(f"{name}: the lean path costs {new / old:.2f}x of twisted.web's (medians; best rounds {best:.2f}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tls", choices=("off", "on", "both"), default="both")
    parser.add_argument("--metrics", choices=("off", "on", "both"), default="on")
    parser.add_argument("--lean", choices=("off", "on", "both"), default="on")
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--announces", type=int, default=2000)
    parser.add_argument("--progress", action="store_true", help="announces carry a progress object")
    args = parser.parse_args()
    choice = {"off": (False,), "on": (True,), "both": (True, False)}
    settings = [(m, lean) for m in choice[args.metrics] for lean in choice[args.lean]]
    for tls in {"off": (False,), "on": (True,), "both": (False, True)}[args.tls]:
        by_setting = measure(tls, args.reps, args.announces, settings, args.progress)
        for (m, lean), rounds in by_setting.items():
            what = (
                ("mutual TLS" if tls else "plain")
                + ("" if args.metrics == "on" else f", metrics {'on' if m else 'off'}")
                + ("" if args.lean == "on" else f", lean path {'on' if lean else 'off'}")
                + (" with progress" if args.progress else "")
            )
            print(
                f"{what}: {min(rounds):.3f} CPU-s per 10,000 announces (best of {len(rounds)} rounds of "
                f"{args.announces}; median {statistics.median(rounds):.3f}; {10_000 / statistics.median(rounds):,.0f} "
                "announces/s on one core)"
            )
        _compare(by_setting, tls, choice[args.lean])
    return 0


if __name__ == "__main__":
    sys.exit(main())
