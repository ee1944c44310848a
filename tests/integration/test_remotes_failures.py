"""Replication between two clusters of real processes when things go wrong: the receiving cluster
SIGKILLed in the middle of a blob and restarted (everything arrives, nothing twice); a remote that
answers garbage, and a blob that does not hash to its digest (retried, never stored); and the copy
over mutual TLS where each cluster has its own CA and the sender trusts the remote's through the
remote's own ``tls`` block."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import trustme
from tls_files import write_ca, write_pair

from ._replication import (
    digest_of,
    get_tag,
    image,
    manifest_of,
    origin_has,
    put_tag,
    running_daemons,  # noqa: F401  (the daemons fixture)
    upload_blob,
)
from .test_origin_cluster import Daemon, Daemons, cached, free_ports
from .test_remotes import DONE, FAST, REPO

FAILED = re.compile(r"replication of team/app:\S+ to \S+ failed \(attempt (\d+)\)")
COMMITTED = re.compile(r"blob (sha256:[0-9a-f]{64}) committed")


def start_origin(daemons: Daemons, tmp_path: Any, name: str, port: int, p2p: int, tls: Any = None) -> Daemon:
    config: dict[str, Any] = {
        "listen_http": f"tcp:{port}:interface=127.0.0.1",
        "store": {"root": str(tmp_path / f"origin-{name.split('.')[0]}")},
        "p2p": {"listen": f"tcp:{p2p}:interface=127.0.0.1"},
        "http_client": FAST,
    }
    if tls is not None:
        config["tls"] = tls
    return daemons.start(f"origin-{name}", "kraken-origin", config, "origin P2P listening")


def start_index(
    daemons: Daemons, tmp_path: Any, name: str, port: int, origin: str, remote: dict[str, Any] | None, tls: Any = None
) -> Daemon:
    config: dict[str, Any] = {
        "listen_http": f"tcp:{port}:interface=127.0.0.1",
        "origin": origin,
        "database": str(tmp_path / f"bi-{name.split('.')[0]}" / "tags.db"),
        "http_client": FAST,
        "replication": {"backoff_min": "200ms", "backoff_max": "1s"},
    }
    if remote is not None:
        config["remotes"] = [{"name": "b", "repositories": "team/.*", **remote}]
    if tls is not None:
        config["tls"] = tls
    return daemons.start(f"build-index-{name}", "kraken-build-index", config, "build-index listening")


def committed(*daemons: Daemon) -> list[str]:
    """The digests the origins committed, in order, over all the runs given."""
    return [m.group(1) for d in daemons for line in d.output.snapshot() if (m := COMMITTED.search(line))]


def no_tracebacks(*daemons: Daemon) -> None:
    for d in daemons:
        assert not [line for line in d.output.snapshot() if re.search(r"Unhandled|Traceback", line)], d.name


def test_the_receiving_cluster_sigkilled_mid_blob_gets_everything_once(daemons: Daemons, tmp_path: Any) -> None:
    o_a, p_a, bi_a, o_b, p_b, bi_b = free_ports(6)
    a_origin, b_origin, b_index = (f"http://127.0.0.1:{p}" for p in (o_a, o_b, bi_b))
    start_origin(daemons, tmp_path, "a", o_a, p_a)
    # 24 MiB at 6 MiB/s: the layer takes seconds to cross, so B dies while it is on the wire
    remote = {"build_index": b_index, "origins": b_origin, "rate": "6MiB"}
    a = start_index(daemons, tmp_path, "a", bi_a, a_origin, remote)
    b_runs = [start_origin(daemons, tmp_path, "b", o_b, p_b), start_index(daemons, tmp_path, "b", bi_b, b_origin, None)]
    daemons.wait_ready()

    layer = os.urandom(24 << 20)
    digest, blobs = image(a_origin, REPO, "killed", layer=layer)
    assert put_tag(f"http://127.0.0.1:{bi_a}", REPO, "v1", digest) == 201
    big = digest_of(layer)
    assert a.output.wait_for(lambda line: f"sending blob {big}" in line)
    for d in b_runs:
        d.stop(signal.SIGKILL)
    assert a.output.wait_for(lambda line: FAILED.search(line) is not None)

    b_runs += [
        start_origin(daemons, tmp_path, "b.2", o_b, p_b),
        start_index(daemons, tmp_path, "b.2", bi_b, b_origin, None),
    ]
    daemons.wait_ready()
    assert a.output.wait_for(lambda line: DONE.search(line) is not None, timeout=120)
    assert get_tag(b_index, REPO, "v1") == digest
    assert all(origin_has(b_origin, REPO, d) for d in blobs)
    received = committed(b_runs[0], b_runs[2])
    # every blob stored once over both runs of B's origin (the layer was on the wire when B died: at
    # 6 MiB/s it needs seconds; not asserted, as that would be a statement about time)
    assert sorted(received) == sorted(blobs)
    no_tracebacks(a, *b_runs[2:])


class Garbage(BaseHTTPRequestHandler):
    """A 'remote' that answers every request with 200 and nonsense."""

    requests: list[str] = []

    def _nonsense(self) -> None:
        self.requests.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b'{"held": 7, "garbage'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _nonsense

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def garbage() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.mark.parametrize("real_origin", [False, True], ids=["all-garbage", "garbage-build-index"])
def test_a_remote_answering_garbage_is_retried_and_never_done(
    daemons: Daemons, tmp_path: Any, garbage: str, real_origin: bool
) -> None:
    Garbage.requests = []
    o_a, p_a, bi_a, o_b, p_b = free_ports(5)
    a_origin, a_index, b_origin = f"http://127.0.0.1:{o_a}", f"http://127.0.0.1:{bi_a}", f"http://127.0.0.1:{o_b}"
    start_origin(daemons, tmp_path, "a", o_a, p_a)
    if real_origin:  # B's origin works; its build-index says 200 and nonsense to the tag
        start_origin(daemons, tmp_path, "b", o_b, p_b)
    remote = {"build_index": garbage, "origins": b_origin if real_origin else garbage}
    a = start_index(daemons, tmp_path, "a", bi_a, a_origin, remote)
    daemons.wait_ready()
    digest, blobs = image(a_origin, REPO, "garbage")
    assert put_tag(a_index, REPO, "v1", digest) == 201
    assert a.output.wait_for(lambda line: (m := FAILED.search(line)) is not None and int(m.group(1)) >= 3)
    with urllib.request.urlopen(f"{a_index}/internal/replication", timeout=10) as r:
        doc = json.load(r)
    [pending] = doc["pending"]
    assert pending["tag"] == "v1" and pending["attempts"] >= 3 and pending["last_error"]
    assert doc["stats"]["remotes"]["b"]["pending"] == 1 and doc["stats"]["remotes"]["b"]["failures"] >= 3
    assert doc["stats"]["replicated"] == 0
    with urllib.request.urlopen(f"{a_index}/stats", timeout=10) as r:
        stats = json.load(r)["replication"]  # the same counters for operators (retries go on meanwhile)
    assert stats["remotes"]["b"]["pending"] == 1 and stats["remotes"]["b"]["failures"] >= 3
    assert not any(DONE.search(line) for line in a.output.snapshot())
    if real_origin:
        assert "the answer is not the tag" in pending["last_error"]
        assert all(origin_has(b_origin, REPO, d) for d in blobs)  # blobs first, each once, never the tag
        assert not any(r.startswith("PATCH") for r in Garbage.requests)
    else:
        assert not [r for r in Garbage.requests if r.startswith(("PUT", "PATCH"))]  # no blob, no tag was sent
    no_tracebacks(a)


def test_a_blob_that_does_not_match_its_digest_is_never_stored(daemons: Daemons, tmp_path: Any) -> None:
    o_a, p_a, bi_a, o_b, p_b, bi_b = free_ports(6)
    a_origin, b_origin, b_index = (f"http://127.0.0.1:{p}" for p in (o_a, o_b, bi_b))
    start_origin(daemons, tmp_path, "a", o_a, p_a)
    a = start_index(daemons, tmp_path, "a", bi_a, a_origin, {"build_index": b_index, "origins": b_origin})
    b = start_origin(daemons, tmp_path, "b", o_b, p_b)
    start_index(daemons, tmp_path, "b", bi_b, b_origin, None)
    daemons.wait_ready()

    layer = b"the real layer" * 1000
    digest, _ = image(a_origin, REPO, "corrupt", layer=layer)
    path = str(tmp_path / "origin-a" / "cache")
    hex_ = digest_of(layer).split(":")[1]
    assert cached(str(tmp_path / "origin-a"), digest_of(layer))
    data_file = os.path.join(path, hex_[:2], hex_[2:4], hex_, "data")
    with open(data_file, "r+b") as f:  # rot on A's disk: same size, other bytes
        f.write(b"X" * 64)

    assert put_tag(f"http://127.0.0.1:{bi_a}", REPO, "v1", digest) == 201
    assert a.output.wait_for(lambda line: (m := FAILED.search(line)) is not None and int(m.group(1)) >= 2)
    assert not origin_has(b_origin, REPO, digest_of(layer))
    assert get_tag(b_index, REPO, "v1") is None
    assert any("rejected" in line for line in b.output.snapshot())

    with open(data_file, "r+b") as f:  # repaired: the next try goes through
        f.write(layer[:64])
    assert a.output.wait_for(lambda line: DONE.search(line) is not None)
    assert get_tag(b_index, REPO, "v1") == digest and origin_has(b_origin, REPO, digest_of(layer))


def test_replication_over_mutual_tls_with_the_remotes_own_ca(daemons: Daemons, tmp_path: Any) -> None:
    ca_a, ca_b = trustme.CA(), trustme.CA()
    certs = tmp_path / "certs"
    a_ca, b_ca = write_ca(certs, ca_a, "a-ca"), write_ca(certs, ca_b, "b-ca")
    a_cert, a_key = write_pair(certs, ca_a, "a-node")
    b_cert, b_key = write_pair(certs, ca_b, "b-node")
    a_for_b, a_for_b_key = write_pair(certs, ca_b, "a-for-b")  # B's certificate for cluster A
    tls_a = {"ca": a_ca, "cert": a_cert, "key": a_key, "client_ca": a_ca, "require_client_cert": True}
    tls_b = {"ca": b_ca, "cert": b_cert, "key": b_key, "client_ca": b_ca, "require_client_cert": True}

    o_a, p_a, bi_a, o_b, p_b, bi_b = free_ports(6)
    a_origin, a_index, b_origin, b_index = (f"https://127.0.0.1:{p}" for p in (o_a, bi_a, o_b, bi_b))
    start_origin(daemons, tmp_path, "a", o_a, p_a, tls_a)
    # the remote's own tls block: B's CA to check B, the certificate B gave A to be let in (A's own
    # CA and certificate, which reach A's origin, would not do for B: A's origin is checked with A's CA)
    remote = {"build_index": b_index, "origins": b_origin, "tls": {"ca": b_ca, "cert": a_for_b, "key": a_for_b_key}}
    a = start_index(daemons, tmp_path, "a", bi_a, a_origin, remote, tls_a)
    b_origin_daemon = start_origin(daemons, tmp_path, "b", o_b, p_b, tls_b)
    b = start_index(daemons, tmp_path, "b", bi_b, b_origin, None, tls_b)
    daemons.wait_ready()

    blobs = [upload_tls(a_origin, a_cert, a_key, a_ca, body) for body in image_bodies()]
    assert put_tls(a_index, a_cert, a_key, a_ca, blobs[-1]) == 201
    assert a.output.wait_for(lambda line: DONE.search(line) is not None)
    [m] = [m for line in a.output.snapshot() if (m := DONE.search(line))]
    assert m.group(3) == "3"
    assert any("(replicated from" in line for line in b.output.snapshot())
    assert sorted(committed(b_origin_daemon)) == sorted(blobs)
    no_tracebacks(a, b)


def image_bodies() -> list[bytes]:
    """A config, a layer and the manifest naming them (the manifest last)."""
    config, layer = b'{"tls": true}', b"layer over mutual TLS" * 512
    return [config, layer, manifest_of(config, layer)]


def _opener(cert: str, key: str, ca: str) -> urllib.request.OpenerDirector:
    import ssl

    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))


def upload_tls(origin: str, cert: str, key: str, ca: str, data: bytes) -> str:
    return upload_blob(origin, REPO, data, opener=_opener(cert, key, ca))


def put_tls(index: str, cert: str, key: str, ca: str, digest: str) -> int:
    return put_tag(index, REPO, "v1", digest, opener=_opener(cert, key, ca))
