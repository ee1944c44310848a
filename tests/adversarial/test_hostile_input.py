"""Malformed registry requests, hostile P2P connections and a peer that sends corrupt pieces: each gets a
clear answer (an OCI error, a closed connection, a blacklist) and nothing else changes; the cluster serves a
pull correctly afterwards."""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

from _clients import MIB, pull, push, repo
from _daemons import write_blob
from _fleet import Fleet
from _hostile import CorruptSeeder, announce_fake, handshake, metainfo

from kraken.core.bitfield import Bitfield
from kraken.p2p import wire

REQUESTS = 5000
CONNECTIONS = 900
CLOSE_WAIT = 30.0  # seconds; a safety rail for a hostile connection to be closed by the daemon
HEX = "0123456789abcdef"


def malformed(rng: random.Random, known: str) -> tuple[str, str, dict[str, str], bytes]:
    """One malformed or hostile registry request: (method, path, headers, body)."""
    digest = "sha256:" + "".join(rng.choice(HEX) for _ in range(64))
    name = rng.choice(["UPPER/case", "a//b", "-lead/x", "x" * 300, "ok/name", "%2e%2e/etc", "a/../b", "n%C3%A9"])
    bad_digest = rng.choice(["sha256:xyz", "md5:" + "0" * 32, "sha256:" + "a" * 63, "sha256", ":", digest.upper()])
    ref = rng.choice([bad_digest, "t" * 200, "-tag", "a:b", "%00", digest])
    kind = rng.randrange(14)
    if kind == 0:
        return "GET", f"/v2/{name}/blobs/{ref}", {}, b""
    if kind == 1:
        return "HEAD", f"/v2/ok/name/blobs/{bad_digest}", {}, b""
    if kind == 2:
        return "GET", f"/v2/ok/name/manifests/{ref}", {"Accept": "garbage/*;;;q=x"}, b""
    if kind == 3:
        body = rng.choice([b"{", b"[]", b"null", os.urandom(64), b'{"schemaVersion":2,"layers":7}'])
        ctype = rng.choice(["application/vnd.oci.image.manifest.v1+json", "text/plain", ""])
        return "PUT", f"/v2/ok/name/manifests/{rng.choice(['t', bad_digest])}", {"Content-Type": ctype}, body
    if kind == 4:
        return "PATCH", f"/v2/ok/name/blobs/uploads/{rng.choice(['nope', '..', 'x' * 100])}", {}, b"data"
    if kind == 5:
        return "PUT", f"/v2/ok/name/blobs/uploads/nope?digest={rng.choice([bad_digest, digest])}", {}, b"x"
    if kind == 6:
        return "POST", f"/v2/ok/name/blobs/uploads/?digest={bad_digest}", {"Content-Length": "3"}, b"abc"
    if kind == 7:
        return "POST", f"/v2/ok/name/blobs/uploads/?mount={ref}&from={name}", {}, b""
    if kind == 8:
        n = rng.choice(["-1", "abc", "0", "99999999999999999999", ""])
        return "GET", f"/v2/ok/name/tags/list?n={n}&last={rng.choice(['', '%ff', name])}", {}, b""
    if kind == 9:
        return "GET", f"/v2/_catalog?n={rng.choice(['x', '-5', '1e9'])}", {}, b""
    if kind == 10:
        rng_header = rng.choice(["bytes=garbage", "bytes=5-2", "bytes=-", "lines=1-2", "bytes=0-0,1-1"])
        return "GET", f"/v2/ok/name/blobs/{known}", {"Range": rng_header}, b""
    if kind == 11:
        return rng.choice(["DELETE", "OPTIONS", "TRACE", "PROPFIND"]), f"/v2/{name}/blobs/{known}", {}, b""
    if kind == 12:
        return "GET", f"/v2/ok/name/referrers/{ref}?artifactType={'%' * 3}", {}, b""
    path = "/" + "".join(chr(rng.randrange(0x21, 0x7F)) for _ in range(rng.randrange(1, 80))).replace("#", "")
    return rng.choice(["GET", "PUT", "POST"]), path, {}, os.urandom(rng.randrange(0, 200))


def send_all(address: str, requests: list[tuple[str, str, dict[str, str], bytes]]) -> Counter[int]:
    """Send each request on a kept-alive connection (a new one when the server closed it); status counts.
    Every 5xx is an assertion failure, and every 4xx under /v2/ must carry an OCI error body."""
    host, port = address.split(":")
    statuses: Counter[int] = Counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=CLOSE_WAIT)
    try:
        for method, path, headers, body in requests:
            for attempt in range(2):
                try:
                    conn.request(method, path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    break
                except (http.client.HTTPException, ConnectionError):
                    conn.close()
                    conn = http.client.HTTPConnection(host, int(port), timeout=CLOSE_WAIT)
                    if attempt:
                        raise
            statuses[response.status] += 1
            assert response.status < 500, f"{method} {path[:100]} -> {response.status}: {data[:300]!r}"
            if path.startswith("/v2/") and response.status >= 400 and method != "HEAD":
                errors = json.loads(data)["errors"]
                assert errors and all(e["code"] and "message" in e for e in errors), (method, path[:100], data)
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=CLOSE_WAIT)
    finally:
        conn.close()
    return statuses


def test_malformed_registry_requests_get_oci_errors_and_no_5xx(fleet: Callable[..., Fleet], tmp_path: Any) -> None:
    f = fleet(origins=2, agents=1)
    name = repo()
    path = str(tmp_path / "blob")
    digest = write_blob(path, 2 * MIB)
    assert push(f.proxy, name, path) == digest
    rng = random.Random(11)
    requests = [malformed(rng, digest) for _ in range(REQUESTS)]
    statuses = send_all(f.proxy, requests[: REQUESTS * 3 // 4]) + send_all(f.registry(0), requests[REQUESTS * 3 // 4 :])
    assert sum(statuses.values()) == REQUESTS
    assert {400, 404}.issubset(statuses), statuses
    # Nothing was stored or broken on the way: the blob is intact through both registries.
    assert pull(f.proxy, name, digest) == (digest, 2 * MIB)
    assert pull(f.registry(0), name, digest) == (digest, 2 * MIB)


def hostile_frames(rng: random.Random, info: Any, namespace: str) -> tuple[int, bytes]:
    """(kind, bytes) of one hostile P2P connection: garbage, oversized or out-of-order frames, bad handshakes."""
    kind = rng.randrange(8)
    return kind, _frames(kind, rng, info, namespace)


def _frames(kind: int, rng: random.Random, info: Any, namespace: str) -> bytes:
    good = b"".join(bytes(c) for c in wire.encode(handshake(info, namespace, complete=False)))
    if kind == 0:
        return os.urandom(rng.randrange(1, 4096))
    if kind == 1:  # a header far over the cap
        return struct.pack(">BI", wire.MessageType.HANDSHAKE, 1 << 30) + os.urandom(64)
    if kind == 2:  # a piece before any handshake
        return b"".join(bytes(c) for c in wire.encode(wire.Piece(0, 16), b"x" * 16))
    if kind == 3:  # an unknown message type
        return struct.pack(">BI", 0xEE, 4) + b"\0\0\0\0"
    if kind == 4:  # a handshake for a blob nobody has
        other = wire.Handshake(os.urandom(20), os.urandom(32), namespace, os.urandom(32), Bitfield(4))
        return b"".join(bytes(c) for c in wire.encode(other))
    if kind == 5:  # a handshake of an unknown wire version
        future = wire.Handshake(os.urandom(20), os.urandom(32), "x", os.urandom(32), Bitfield(1), version=99)
        return b"".join(bytes(c) for c in wire.encode(future))
    if kind == 6:  # a good handshake, then a request for a piece that does not exist
        return good + b"".join(bytes(c) for c in wire.encode(wire.PieceRequest(info.num_pieces + 5)))
    return good + os.urandom(rng.randrange(1, 512))  # a good handshake, then garbage


def closed_by_daemon(port: int, data: bytes) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=CLOSE_WAIT) as s:
        try:
            s.sendall(data)
        except OSError:
            return True  # reset while we were still sending
        try:
            while s.recv(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            pass
        return True


def test_hostile_p2p_connections_are_closed_and_crash_nothing(fleet: Callable[..., Fleet], tmp_path: Any) -> None:
    # A stream that stops inside a frame is closed by the idle timeout (conn_tti, 30 s by default): 5 s here.
    f = fleet(
        origins=2, agents=2, overrides={"origin": {"p2p": {"conn_tti": "5s"}}, "agent": {"p2p": {"conn_tti": "5s"}}}
    )
    name = repo()
    path = str(tmp_path / "blob")
    digest = write_blob(path, 4 * MIB)
    assert push(f.proxy, name, path) == digest
    assert pull(f.registry(0), name, digest) == (digest, 4 * MIB)  # agent 0 seeds it now
    info = metainfo(f.tracker_url, name, digest)
    rng = random.Random(7)
    ports = [*f.origin_p2p, f.agent_p2p(0)]
    open_left = []
    for i in range(CONNECTIONS):
        port = ports[i % len(ports)]
        kind, data = hostile_frames(rng, info, name)
        if not closed_by_daemon(port, data):
            open_left.append((port, kind))
    assert not open_left, f"hostile connections left open (port, kind): {open_left}"
    assert all(d.alive() for d in f.daemons.values())
    assert pull(f.registry(1), name, digest) == (digest, 4 * MIB)


def test_a_peer_sending_corrupt_pieces_is_caught_and_blacklisted(fleet: Callable[..., Fleet], tmp_path: Any) -> None:
    f = fleet(origins=2, agents=1, agent_rate=50_000_000)
    name = repo()
    path = str(tmp_path / "blob")
    digest = write_blob(path, 16 * MIB)
    assert push(f.proxy, name, path) == digest
    info = metainfo(f.tracker_url, name, digest)
    liar = CorruptSeeder(info, name)
    try:
        assert (
            announce_fake(f.tracker_url, info, name, liar.port, source="127.0.0.1", peer_id=liar.peer_id.hex())[0]
            == 200
        )
        assert pull(f.registry(0), name, digest) == (digest, 16 * MIB)
    finally:
        liar.close()
    assert liar.pieces_sent >= 1
    agent = f["agent-0"]
    agent.wait_for(rf"blacklisting peer {liar.peer_id.hex()[:12]} for {digest}: .*SHA-256", 10.0)
