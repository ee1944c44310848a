"""An attacker against a secured cluster (``Fleet(secure=True)``: mutual TLS between the daemons, on P2P and the
agent API, TLS and HTTP Basic auth on the proxy), real daemons, one fleet for the module.

Every attack fails closed with the right error, and nothing stored changes: internal routes without a cluster
certificate (none, another CA's, an expired one of the cluster's CA) are refused in the TLS handshake and the
daemon logs the refusal with the peer; a tag repoint is refused on every write route and the tag still gives the
original image; a blob pushed straight to an origin is not stored; fake announces never reach a handout; a push
over the proxy's size limit is 413 SIZE_INVALID with nothing kept; without credentials the proxy reads nothing
and cannot write into, finish or cancel another client's upload session.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import itertools
import json
import os
import re
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from _fleet import Fleet

from kraken.core import Digest
from kraken.core.metainfo import MetaInfo

MAX_BLOB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
WAIT = 60.0  # seconds; a safety rail for a log line
ATTACKER = "127.0.0.2"  # the attacker's source address (any of 127.0.0.0/8 is loopback)


class Image:
    """The image pushed before the attacks: its repository, tag, manifest and blobs."""

    def __init__(self, f: Fleet) -> None:
        self.repo, self.tag = "attacked/app", "v1"
        self.config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
        self.layer = os.urandom(64 << 10)
        client = f.dxf(f.proxy, self.repo)
        self.blobs = {str(Digest.from_bytes(b)): b for b in (self.config, self.layer)}
        for digest, data in self.blobs.items():
            path = os.path.join(f.work, digest.split(":")[1])
            with open(path, "wb") as out:
                out.write(data)
            assert client.push_blob(path) == digest
        self.manifest = manifest(self.config, self.layer)
        self.digest = str(Digest.from_bytes(self.manifest))
        client.set_manifest(self.tag, self.manifest.decode())


def manifest(config: bytes, layer: bytes) -> bytes:
    def descriptor(kind: str, data: bytes) -> dict[str, Any]:
        return {"mediaType": kind, "digest": str(Digest.from_bytes(data)), "size": len(data)}

    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
    }).encode()  # fmt: skip


def ask(
    url: str, method: str, path: str, *, context: ssl.SSLContext, body: bytes = b"", headers: Any = None
) -> tuple[int, Any, bytes]:
    """One HTTPS request to ``url`` (``https://host:port``); (status, headers, body)."""
    host, port = url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), timeout=30, context=context)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def attempt(url: str, method: str, path: str, body: bytes, context: ssl.SSLContext) -> tuple[int, ssl.SSLError]:
    """Send a request over TLS from ``ATTACKER``: it must fail with an SSL error. (our port, the error)."""
    host, port = url.removeprefix("https://").split(":")
    raw = socket.create_connection((host, int(port)), timeout=30, source_address=(ATTACKER, 0))
    ours = int(raw.getsockname()[1])
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    with pytest.raises(ssl.SSLError) as caught:
        with raw, context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(head.encode() + body)
            answer = tls.recv(100)
            raise AssertionError(f"{url}{path} answered: {answer!r}")
    return ours, caught.value


def codes(body: bytes) -> list[str]:
    """The codes of an OCI error body."""
    return [str(e["code"]) for e in json.loads(body)["errors"]]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def upload_sessions(f: Fleet) -> list[str]:
    return [n for n in os.listdir(f.root("proxy-uploads")) if re.fullmatch(r"[0-9a-f]{32}", n)]


def store_files(f: Fleet, name: str) -> set[str]:
    root = f.root(name)
    return {os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names}


def tag_of(f: Fleet, image: Image) -> str:
    status, _, body = ask(f.build_index_url, "GET", f"/repositories/{image.repo}/tags/{image.tag}",
                          context=f.client_context())  # fmt: skip
    assert status == 200, body
    return body.decode().strip()


def held(f: Fleet, digest: str) -> dict[str, Any]:
    status, _, body = ask(f.origin_urls[0], "POST", "/blobs/stat", context=f.client_context(),
                          body=json.dumps({"digests": [digest]}).encode())  # fmt: skip
    assert status == 200, body
    return dict(json.loads(body)["held"])


def info_hash(f: Fleet, digest: str) -> str:
    """The blob's info hash, from the tracker's metainfo (asked with the cluster's certificate)."""
    status, _, body = ask(f.tracker_url, "GET", f"/namespace/attacked/blobs/{digest}/metainfo",
                          context=f.client_context())  # fmt: skip
    assert status == 200, body
    return str(MetaInfo.from_json(body).info_hash)


def handout(f: Fleet, digest: str) -> list[dict[str, Any]]:
    """A legitimate announce (a downloader with the cluster's certificate): the peers it is given."""
    doc = {"peer_id": "ab" * 20, "ip": "127.0.0.1", "port": 9, "namespace": "attacked", "digest": digest,
           "info_hash": info_hash(f, digest), "complete": False}  # fmt: skip
    status, _, body = ask(f.tracker_url, "POST", "/announce", context=f.client_context(), body=json.dumps(doc).encode(),
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert status == 200, body
    return list(json.loads(body)["peers"])


@pytest.fixture(scope="module")
def secured(tmp_path_factory: Any) -> Iterator[tuple[Fleet, Image, set[str]]]:
    """One secured fleet for the module (an origin, one agent), the image pushed, and the origin's store files
    then; at the end, the origin's store is unchanged and no daemon logged an unhandled error."""
    work = str(tmp_path_factory.mktemp("attacker") / "fleet")
    f = Fleet(work, origins=1, replicas=1, agents=1, secure=True,
              overrides={"proxy": {"limits": {"max_blob_size": MAX_BLOB}}})  # fmt: skip
    try:
        image = Image(f)
        before = store_files(f, "origin-0")
        yield f, image, before
        assert store_files(f, "origin-0") == before
        assert tag_of(f, image) == image.digest
    finally:
        f.stop()
    assert not f.errors(), f"unhandled errors in the logs: {f.errors()}"


def bad_clients(f: Fleet) -> list[tuple[ssl.SSLContext, str, str]]:
    """Clients trusting the cluster's CA that present no certificate, one from another CA, an expired one of the
    cluster's CA: each with the TLS alert it gets and the reason the daemon logs."""
    now = datetime.datetime.now(datetime.timezone.utc)
    old = {"not_before": now - datetime.timedelta(days=10), "not_after": now - datetime.timedelta(days=1)}
    return [
        (f.client_context(cert=False), "CERTIFICATE_REQUIRED", "peer did not return a certificate"),
        (f.client_context(f.issue("stranger", trustme.CA())), "UNKNOWN_CA", "certificate verify failed"),
        (f.client_context(f.issue("expired", **old)), "CERTIFICATE_EXPIRED", "certificate verify failed"),
    ]


def refused(f: Fleet, daemon: str, url: str, method: str, path: str, body: bytes = b"") -> None:
    """Each bad client's request is refused in the TLS handshake: the client gets the TLS alert (or, still
    sending its body, the connection closed under it), and ``daemon`` logs the refusal with the peer."""
    for context, alert, reason in bad_clients(f):
        mark = f[daemon].mark()
        port, error = attempt(url, method, path, body, context)
        assert alert in str(error) or (bool(body) and isinstance(error, ssl.SSLEOFError)), error
        f[daemon].wait_for(rf"TLS handshake with {re.escape(ATTACKER)}:{port} refused on \S.*: {reason}$", WAIT, mark)


def test_internal_routes_refuse_clients_without_a_cluster_certificate(secured: Any) -> None:
    f, image, _ = secured
    evil = os.urandom(1000)
    d = str(Digest.from_bytes(evil))
    refused(f, "origin-0", f.origin_urls[0], "POST", f"/namespace/attacked/blobs/{d}/uploads")
    refused(f, "origin-0", f.origin_urls[0], "POST", "/blobs/stat", json.dumps({"digests": [d]}).encode())
    refused(f, "tracker", f.tracker_url, "POST", "/announce", b"{}")
    refused(f, "agent-0", f.agent_api(0), "GET", f"/namespace/attacked/blobs/{image.digest}")
    # P2P speaks mutual TLS too: the handshake is refused before any wire message.
    refused(f, "origin-0", f"https://127.0.0.1:{f.origin_p2p[0]}", "GET", "/")
    refused(f, "agent-0", f"https://127.0.0.1:{f.agent_p2p(0)}", "GET", "/")
    assert d not in held(f, d)


def test_a_tag_repoint_is_refused_on_every_write_route(secured: Any) -> None:
    f, image, _ = secured
    evil_layer = os.urandom(4096)
    evil = manifest(image.config, evil_layer)
    evil_digest = str(Digest.from_bytes(evil))
    # The proxy, its blob upload and manifest routes: no credentials, then wrong ones.
    writes = [("POST", f"/v2/{image.repo}/blobs/uploads/?digest={Digest.from_bytes(evil_layer)}", evil_layer),
              ("PUT", f"/v2/{image.repo}/manifests/{image.tag}", evil)]  # fmt: skip
    for (method, path, data), auth in itertools.product(writes, ({}, {"Authorization": basic("pusher", "guess")})):
        status, headers, body = ask(f"https://{f.proxy}", method, path, context=f.client_context(cert=False),
                                    body=data, headers={"Content-Type": OCI_MANIFEST, **auth})  # fmt: skip
        assert (status, codes(body)) == (401, ["UNAUTHORIZED"]), (method, path, auth)
        assert headers["WWW-Authenticate"].startswith("Basic ")
    assert upload_sessions(f) == []
    # An agent's registry is read-only, whoever asks.
    status, _, body = ask(f"https://{f.registry(0)}", "PUT", f"/v2/{image.repo}/manifests/{image.tag}",
                          context=f.client_context(), body=evil, headers={"Content-Type": OCI_MANIFEST})  # fmt: skip
    assert (status, codes(body)) == (405, ["UNSUPPORTED"])
    # The build-index: its tag route and the internal duplicate route, without a cluster certificate.
    for path in (f"/repositories/{image.repo}/tags/{image.tag}",
                 f"/internal/duplicate/repositories/{image.repo}/tags/{image.tag}"):  # fmt: skip
        refused(f, "build-index", f.build_index_url, "PUT", path, evil_digest.encode())
    # The tag still points to the original image (the only tag), and an agent pulls the original bytes.
    assert tag_of(f, image) == image.digest
    status, _, body = ask(f.build_index_url, "GET", f"/repositories/{image.repo}/tags", context=f.client_context())
    assert status == 200 and json.loads(body)["tags"] == [image.tag]
    status, _, body = ask(f"https://{f.registry(0)}", "GET", f"/v2/{image.repo}/manifests/{image.tag}",
                          context=f.client_context(cert=False), headers={"Accept": OCI_MANIFEST})  # fmt: skip
    assert status == 200 and body == image.manifest
    agent = f.dxf(f.registry(0), image.repo, auth=False)
    for digest, data in image.blobs.items():
        assert b"".join(agent.pull_blob(digest)) == data
    assert str(Digest.from_bytes(evil_layer)) not in held(f, str(Digest.from_bytes(evil_layer)))


def test_a_blob_pushed_straight_to_an_origin_is_not_stored(secured: Any) -> None:
    f, _, before = secured
    evil = os.urandom(1 << 16)
    d = str(Digest.from_bytes(evil))
    refused(f, "origin-0", f.origin_urls[0], "POST", f"/namespace/attacked/blobs/{d}/uploads")
    refused(f, "origin-0", f.origin_urls[0], "PUT", f"/namespace/attacked/blobs/{d}/uploads/0123", evil)
    assert held(f, d) == {}
    assert store_files(f, "origin-0") == before


def test_fake_announces_never_reach_a_handout(secured: Any) -> None:
    f, image, _ = secured
    layer = str(Digest.from_bytes(image.layer))
    before = handout(f, layer)
    fake = "ee" * 20
    doc = {"peer_id": fake, "ip": ATTACKER, "port": 9999, "namespace": "attacked", "digest": layer,
           "info_hash": info_hash(f, layer), "complete": True}  # fmt: skip
    for _ in range(3):
        refused(f, "tracker", f.tracker_url, "POST", "/announce", json.dumps(doc).encode())
    after = handout(f, layer)
    assert fake not in {p["peer_id"] for p in after}
    assert ATTACKER not in {p["ip"] for p in after}
    assert {p["peer_id"] for p in after} == {p["peer_id"] for p in before}


def test_a_push_over_the_size_limit_is_refused_and_not_kept(secured: Any) -> None:
    f, image, before = secured
    big = os.urandom(MAX_BLOB + 1)
    d = str(Digest.from_bytes(big))
    auth = basic(*f.credentials)
    status, _, body = ask(f"https://{f.proxy}", "POST", f"/v2/{image.repo}/blobs/uploads/?digest={d}",
                          context=f.client_context(cert=False), body=big, headers={"Authorization": auth})  # fmt: skip
    assert (status, codes(body)) == (413, ["SIZE_INVALID"])
    assert held(f, d) == {}
    assert upload_sessions(f) == []
    assert store_files(f, "origin-0") == before
    assert hashlib.sha256(big).hexdigest() not in "".join(store_files(f, "origin-0"))


def test_without_credentials_the_proxy_gives_nothing_and_takes_over_no_upload(secured: Any) -> None:
    f, image, before = secured
    proxy, context = f"https://{f.proxy}", f.client_context(cert=False)
    for method, path in [("GET", f"/v2/{image.repo}/manifests/{image.tag}"), ("GET", "/v2/_catalog"),
                         ("GET", f"/v2/{image.repo}/tags/list"), ("GET", f"/v2/{image.repo}/blobs/{image.digest}"),
                         ("DELETE", f"/v2/{image.repo}/manifests/{image.tag}")]:  # fmt: skip
        status, _, body = ask(proxy, method, path, context=context)
        assert (status, codes(body)) == (401, ["UNAUTHORIZED"]), (method, path)
    # A session started by the legitimate user cannot be written, finished or cancelled by the attacker.
    status, headers, _ = ask(proxy, "POST", f"/v2/{image.repo}/blobs/uploads/", context=context,
                             headers={"Authorization": basic(*f.credentials)})  # fmt: skip
    assert status == 202
    session = headers["Location"]
    evil = os.urandom(4096)
    for method, path, data in [("PATCH", session, evil), ("PUT", f"{session}?digest={Digest.from_bytes(evil)}", evil),
                               ("DELETE", session, b"")]:  # fmt: skip
        status, _, body = ask(proxy, method, path, context=context, body=data)
        assert (status, codes(body)) == (401, ["UNAUTHORIZED"]), method
    status, headers, _ = ask(proxy, "GET", session, context=context, headers={"Authorization": basic(*f.credentials)})
    assert status == 204 and headers["Range"] == "0-0"
    assert held(f, str(Digest.from_bytes(evil))) == {}
    status, _, _ = ask(proxy, "DELETE", session, context=context, headers={"Authorization": basic(*f.credentials)})
    assert status == 204 and upload_sessions(f) == []
    assert store_files(f, "origin-0") == before
