"""Hostile peers and clients for the adversarial tests and their benchmark, in blocking sockets and threads
(the daemons are other processes).

- ``announce_fake``: tell the tracker about a made-up peer, from a source address of our choosing;
  ``handout``: what the tracker tells a newcomer.
- ``Tarpit``: accepts TCP connections and never answers; counts them.
- ``CorruptSeeder``: a peer that completes the handshake, claims every piece and sends garbage for each.
- ``PeerClient``: a leecher that handshakes with a seeder; ``SlotHolder``: one that then only cancels.
- ``big_manifest``: an OCI manifest of thousands of made-up layers; ``HealthWatch``: asks a health check
  over and over while something else runs, and keeps the slowest answer.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from _fleet import Fleet, run_all

from kraken.core import Digest
from kraken.core.bitfield import Bitfield
from kraken.core.metainfo import MetaInfo
from kraken.p2p import wire

TIMEOUT = 30.0  # seconds; a backstop for every blocking call


def metainfo(tracker_url: str, namespace: str, digest: str) -> MetaInfo:
    with urllib.request.urlopen(f"{tracker_url}/namespace/{namespace}/blobs/{digest}/metainfo", timeout=TIMEOUT) as r:
        return MetaInfo.from_json(r.read())


def post_json(url: str, doc: dict[str, Any], *, source: str = "127.0.0.1") -> tuple[int, bytes]:
    """POST ``doc`` from the local address ``source`` (any of 127.0.0.0/8); (status, body)."""
    body = json.dumps(doc).encode()
    host, _, port = url.removeprefix("http://").partition("/")[0].partition(":")
    conn = socket.create_connection((host, int(port)), timeout=TIMEOUT, source_address=(source, 0))
    with conn:
        path = "/" + url.removeprefix("http://").partition("/")[2]
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def announce_fake(
    tracker_url: str, info: MetaInfo, namespace: str, port: int, *, source: str, peer_id: str | None = None
) -> tuple[int, bytes]:
    """Announce a made-up complete peer at ``source:port`` (its id random unless given)."""
    doc = {
        "peer_id": peer_id or os.urandom(20).hex(),
        "ip": source,
        "port": port,
        "namespace": namespace,
        "digest": str(info.digest),
        "info_hash": info.info_hash,
        "complete": True,
    }
    return post_json(f"{tracker_url}/announce", doc, source=source)


class _Messages:
    """A ``WireSink`` that keeps whole messages and counts payload bytes."""

    def __init__(self) -> None:
        self.messages: list[wire.Message] = []
        self.payload = 0

    def on_message(self, msg: wire.Message) -> None:
        self.messages.append(msg)

    def on_payload(self, index: int, chunk: wire.Chunk) -> None:
        self.payload += len(chunk)

    def on_payload_end(self, index: int) -> None:
        pass


def send(sock: socket.socket, msg: wire.Message, payload: bytes = b"") -> None:
    sock.sendall(b"".join(bytes(c) for c in wire.encode(msg, payload)))


def handshake(info: MetaInfo, namespace: str, *, complete: bool, peer_id: bytes | None = None) -> wire.Handshake:
    n = info.num_pieces
    bitfield = Bitfield.full(n) if complete else Bitfield(n)
    digest = bytes.fromhex(Digest.parse(str(info.digest)).hex)
    return wire.Handshake(peer_id or os.urandom(20), bytes.fromhex(info.info_hash), namespace, digest, bitfield)


class Listener:
    """A loopback listener whose connections a subclass handles, each in a thread of its own."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self.accepted += 1
                self.conns.append(conn)
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        """Hold the connection and never answer."""

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self.conns = self.conns, []
        self.sock.close()
        for conn in conns:
            conn.close()


Tarpit = Listener


class CorruptSeeder(Listener):
    """Answers the handshake as a complete peer of ``info`` and sends random bytes for every piece asked for."""

    def __init__(self, info: MetaInfo, namespace: str) -> None:
        self.info = info
        self.namespace = namespace
        self.peer_id = os.urandom(20)
        self.pieces_sent = 0
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        sink = _Messages()
        decoder = wire.Decoder(sink)
        conn.settimeout(TIMEOUT)
        answered = False
        try:
            while data := conn.recv(65536):
                decoder.feed(data)
                for msg in sink.messages:
                    if isinstance(msg, wire.Handshake) and not answered:
                        send(conn, handshake(self.info, self.namespace, complete=True, peer_id=self.peer_id))
                        answered = True
                    elif isinstance(msg, wire.PieceRequest):
                        size = self.info.piece_size(msg.index)
                        send(conn, wire.Piece(msg.index, size), os.urandom(size))
                        self.pieces_sent += 1
                sink.messages.clear()
        except (OSError, wire.FramingError):
            pass


class PeerClient:
    """A connection to a seeder: sends our handshake and reads the answer (``handshake()``)."""

    def __init__(self, port: int, info: MetaInfo, namespace: str, *, source: str = "127.0.0.1") -> None:
        self.info = info
        self.namespace = namespace
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0))
        self._sink = _Messages()
        self._decoder = wire.Decoder(self._sink)

    def handshake(self) -> wire.Message:
        """Our handshake as an empty leecher; the first message of the answer (a Handshake, or an Error)."""
        send(self.sock, handshake(self.info, self.namespace, complete=False))
        return self.read()

    def read(self) -> wire.Message:
        while not self._sink.messages:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the peer")
            self._decoder.feed(data)
        return self._sink.messages.pop(0)

    def closed_by_peer(self, timeout: float) -> bool:
        """True once the peer has closed the connection (anything it sends meanwhile is read and dropped);
        False if it is still open after ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            return True
        return True

    def close(self) -> None:
        self.sock.close()


PROBE = "127.0.0.3"  # a third party that asks the tracker what it hands out
PROBE_ID = "ab" * 20  # it announces itself as a downloader at a port where nothing listens


def closed_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def handout(tracker_url: str, info: MetaInfo, namespace: str) -> list[dict[str, Any]]:
    """What the tracker tells a new downloader at ``PROBE`` about the blob."""
    doc = {"peer_id": PROBE_ID, "ip": PROBE, "port": 9, "namespace": namespace, "digest": str(info.digest),
           "info_hash": info.info_hash, "complete": False}  # fmt: skip
    status, body = post_json(f"{tracker_url}/announce", doc, source=PROBE)
    assert status == 200, body
    return list(json.loads(body)["peers"])


class SlotHolder:
    """A leecher that completes the handshake and then only ever cancels, once a second, until it is closed."""

    def __init__(self, port: int, info: Any, namespace: str, *, source: str = "127.0.0.1") -> None:
        self.client = PeerClient(port, info, namespace, source=source)
        self.answer = self.client.handshake()
        self.closed = threading.Event()
        self.last: wire.Message | None = None
        if isinstance(self.answer, wire.Handshake):
            threading.Thread(target=self._hold, daemon=True).start()
        else:
            self.closed.set()

    def _hold(self) -> None:
        self.client.sock.settimeout(1.0)
        try:
            while True:
                try:
                    self.last = self.client.read()
                except TimeoutError:
                    send(self.client.sock, wire.Cancel(0))
        except (OSError, ConnectionError, wire.FramingError):
            pass
        self.closed.set()


def big_manifest(config: str, config_size: int, salt: int, layers: int) -> bytes:
    """An OCI image manifest of ``layers`` made-up layers (none exists), different for each ``salt``."""
    layers = [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": "sha256:" + hashlib.sha256(f"{salt}-{i}".encode()).hexdigest(),
            "size": 1000 + i,
        }
        for i in range(layers)
    ]
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": layers,
    }
    return json.dumps(doc).encode()


def put_manifest(address: str, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        conn.request("PUT", f"/v2/{name}/manifests/t", body=body,
                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})  # fmt: skip
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


class HealthWatch:
    """Asks the proxy's health check over and over while the flood runs; keeps the slowest answer."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._stop = threading.Event()
        self.slowest = 0.0
        self.answers = 0
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        host, port = self._address.split(":")
        while not self._stop.is_set():
            start = time.monotonic()
            conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
            try:
                conn.request("GET", "/health")
                status = conn.getresponse().status
                if status != 200:
                    self.failures.append(f"health answered {status}")
            except OSError as e:
                self.failures.append(f"health: {e}")
            finally:
                conn.close()
            self.slowest = max(self.slowest, time.monotonic() - start)
            self.answers += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)


@dataclass
class Flood:
    """What ``flood_manifests`` saw."""

    answers: list[tuple[int, dict[str, Any]]]  # (status, OCI JSON) of each PUT
    seconds: float  # until every PUT was answered
    slowest_health: float  # the slowest answer of the proxy's health check meanwhile
    health_answers: int
    health_failures: list[str]
    rss_growth: int  # bytes the proxy's RSS grew


def flood_manifests(f: Fleet, name: str, config: str, size: int, *, count: int = 8, layers: int = 10_000) -> Flood:
    """PUT ``count`` manifests of ``layers`` made-up layers each (and the config ``config`` of ``size`` bytes)
    to the proxy at once, while its health check is asked over and over."""
    bodies = [big_manifest(config, size, salt, layers) for salt in range(count)]
    rss = f["proxy"].rss()
    watch = HealthWatch(f.proxy)
    start = time.monotonic()
    try:
        answers = run_all([lambda b=b: put_manifest(f.proxy, name, b) for b in bodies])  # type: ignore[misc]
        seconds = time.monotonic() - start
    finally:
        watch.stop()
    return Flood(answers, seconds, watch.slowest, watch.answers, watch.failures, f["proxy"].rss() - rss)
