"""CPU-seconds per GiB of a bulk transfer, plain and over our TLS layers, side by side.

    python bench/tls_cost.py [--mib 256] [--rounds 5] [--modes plain,tls]

A server process (this script with ``--serve``) listens on loopback twice with the daemons' own listener
(``kraken.net.server.listen_http`` over ``make_site``): plain, and TLS with a required client certificate
(``TLSContexts.http_server``: ``TLSServerFactory``, mutual TLS as between the daemons). The client is a
daemon's HTTP client (``make_http_client`` with ``TLSContexts``: treq over Twisted's ``Agent``, the path of
the proxy's uploads to and downloads from an origin). Certificates come from a trustme CA.

Each round, for each mode: ``PUT /sink`` of ``--mib`` MiB (the client sends 1 MiB writes from a producer, as
``ThreadedFileProducer`` does; the server's spool drops the bytes), then ``GET /blob`` of as many (the server
writes 1 MiB chunks from a push producer; the client's ``treq.collect`` counts them). Each process's CPU time
(user + system, ``time.process_time``) is read around each transfer (the server's through ``GET /cpu``), so the figures
leave out nothing of the processes but the other side's, and do not depend on how busy the machine is.
Printed: best and median over ``--rounds`` of CPU-seconds per GiB for the receiving and the sending side of
each direction, their sum, and TLS over plain. Run it under ``py-spy record --subprocesses`` to see where
the time goes. The ``kraken`` measured is the one ``PYTHONPATH`` names first (else this script's tree): to
compare two trees, run it alternately with each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import treq
import trustme
from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

if not os.environ.get("PYTHONPATH"):  # with PYTHONPATH (another tree, to compare), that tree's kraken
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kraken
from kraken.net.client import HTTPClientConfig, make_http_client
from kraken.net.server import listen_http, make_site, port_address
from kraken.net.tls import TLSConfig, TLSContexts

MIB = 1 << 20
CHUNK = b"\x5a" * MIB


def cpu() -> float:
    return time.process_time()


# ----------------------------------------------------------------------------------------------- server


class _Discard:
    """A spool that drops what it is given (the server's receiving cost without a disk)."""

    def __init__(self, **_: Any) -> None:
        self._size = 0

    def write(self, data: bytes) -> None:
        self._size += len(data)

    def tell(self) -> int:
        return self._size

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def read(self, n: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass

    def done_receiving(self) -> Deferred[None]:
        return defer.succeed(None)


class _Chunks:
    """Writes ``count`` MiB to ``consumer`` while it is not paused (a push producer)."""

    def __init__(self, consumer: Any, count: int) -> None:
        self.consumer, self.left, self.paused = consumer, count, False

    def resumeProducing(self) -> None:
        self.paused = False
        while self.left and not self.paused:
            self.left -= 1
            self.consumer.write(CHUNK)
        if not self.left and self.consumer is not None:
            consumer, self.consumer = self.consumer, None
            consumer.unregisterProducer()
            consumer.finish()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.left = 0


class _Sink(Resource):
    isLeaf = True

    def render_PUT(self, request: Any) -> bytes:
        return b"%d" % request.content.tell()


class _Blob(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        count = int(request.args[b"mib"][0])
        request.setHeader(b"content-length", b"%d" % (count * MIB))
        producer = _Chunks(request, count)
        request.registerProducer(producer, True)
        producer.resumeProducing()
        return NOT_DONE_YET


class _CPU(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"%.6f" % cpu()


def serve(directory: str) -> None:
    root = Resource()
    root.putChild(b"sink", _Sink())
    root.putChild(b"blob", _Blob())
    root.putChild(b"cpu", _CPU())
    site = make_site(root, reactor=reactor, access_log=False, spool=_Discard)
    d = directory
    config = TLSConfig(cert=f"{d}/server.crt", key=f"{d}/server.key", client_ca=f"{d}/ca.crt", require_client_cert=True)
    services = [
        listen_http("tcp:0:interface=127.0.0.1", site, reactor=reactor, component="plain"),
        listen_http(
            "tcp:0:interface=127.0.0.1", site, reactor=reactor, component="tls", tls=TLSContexts(config).http_server()
        ),
    ]

    @defer.inlineCallbacks
    def announce() -> Any:
        ports = []
        for service in services:
            service.startService()
            ports.append(port_address((yield service._waitingForPort)))
        print(" ".join(ports), flush=True)

    reactor.callWhenRunning(announce)
    reactor.run()


# ----------------------------------------------------------------------------------------------- client


@implementer(IBodyProducer)
class _Body:
    """An upload of ``count`` MiB from memory, in 1 MiB writes, as ``ThreadedFileProducer`` writes."""

    def __init__(self, count: int) -> None:
        self.length = count * MIB
        self._chunks: _Chunks | None = None
        self._done: Deferred[None] = Deferred()

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self._chunks = _Chunks(self, self.length // MIB)
        self._consumer = consumer
        self._chunks.resumeProducing()
        return self._done

    def write(self, data: bytes) -> None:
        self._consumer.write(data)

    def unregisterProducer(self) -> None:
        pass

    def finish(self) -> None:
        self._done.callback(None)

    def pauseProducing(self) -> None:
        assert self._chunks is not None
        self._chunks.pauseProducing()

    def resumeProducing(self) -> None:
        assert self._chunks is not None
        self._chunks.resumeProducing()

    def stopProducing(self) -> None:
        if self._chunks is not None:
            self._chunks.stopProducing()


async def measure(client: Any, base: str, mib: int) -> tuple[float, float, float, float]:
    """(server receiving, client sending, server sending, client receiving) CPU-seconds for ``mib`` MiB."""

    async def server_cpu() -> float:
        return float(await treq.content(await client.get(base + "/cpu")))

    s0, c0 = await server_cpu(), cpu()
    response = await client.put(base + "/sink", data=_Body(mib))
    assert int(await treq.content(response)) == mib * MIB
    c1, s1 = cpu(), await server_cpu()
    received = 0

    def count(data: bytes) -> None:
        nonlocal received
        received += len(data)

    response = await client.get(base + f"/blob?mib={mib}")
    await treq.collect(response, count)
    c2, s2 = cpu(), await server_cpu()
    assert received == mib * MIB
    return s1 - s0, c1 - c0, s2 - s1, c2 - c1


def files(directory: str) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(f"{directory}/ca.crt")
    for name in ("server", "client"):
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        leaf.cert_chain_pems[0].write_to_path(f"{directory}/{name}.crt")
        leaf.private_key_pem.write_to_path(f"{directory}/{name}.key")


def report(results: dict[str, list[tuple[float, ...]]], mib: int) -> None:
    per_gib = 1024 / mib
    names = ("server recv", "client send", "upload", "server send", "client recv", "download")
    print(f"CPU-seconds per GiB, best / median of {len(next(iter(results.values())))} rounds of {mib} MiB")
    print(f"{'':8}" + "".join(f"{n:>18}" for n in names))
    columns: dict[str, list[float]] = {}
    for mode, rounds in results.items():
        rows = [(r[0], r[1], r[0] + r[1], r[2], r[3], r[2] + r[3]) for r in rounds]
        cells = []
        for i in range(len(names)):
            values = [row[i] * per_gib for row in rows]
            columns.setdefault(mode, []).append(statistics.median(values))
            cells.append(f"{min(values):7.2f} / {statistics.median(values):5.2f}")
        print(f"{mode:8}" + "".join(f"{c:>18}" for c in cells))
    if set(columns) == {"plain", "tls"}:
        ratios = [t / p if p else float("nan") for t, p in zip(columns["tls"], columns["plain"], strict=True)]
        print(f"{'tls/plain':9}" + "".join(f"{r:>17.2f}x" for r in ratios) + "  (medians)")


async def run(args: argparse.Namespace, directory: str, server: subprocess.Popen[str], tree: str) -> None:
    try:
        assert server.stdout is not None
        plain, secure = server.stdout.readline().split()
        config = TLSConfig(ca=f"{directory}/ca.crt", cert=f"{directory}/client.crt", key=f"{directory}/client.key")
        client, pool = make_http_client(reactor, HTTPClientConfig(), tls=TLSContexts(config))
        bases = {"plain": f"http://{plain}", "tls": f"https://{secure}"}
        modes = args.modes.split(",")
        for mode in modes:  # warm up: connections, handshakes, first allocations
            await measure(client, bases[mode], 8)
        results: dict[str, list[tuple[float, ...]]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode in modes:
                results[mode].append(await measure(client, bases[mode], args.mib))
        await pool.pool.closeCachedConnections()
        report(results, args.mib)
        print(f"kraken from {tree}")
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="MiB per transfer (default 256)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default="plain,tls", help="plain,tls (default), plain or tls")
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    with tempfile.TemporaryDirectory(prefix="tls-cost-") as directory:
        files(directory)
        server = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", directory], stdout=subprocess.PIPE, text=True
        )
        tree = os.path.dirname(os.path.dirname(os.path.abspath(kraken.__file__)))
        task.react(lambda _: defer.ensureDeferred(run(args, directory, server, tree)))


if __name__ == "__main__":
    main()
