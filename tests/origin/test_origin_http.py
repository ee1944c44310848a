"""OriginHTTP through StubTreq: no sockets, no threads, no sleeping."""

from __future__ import annotations

import json
import os

import pytest
from origin_harness import ADVERTISE, PEER, PIECE, FixedPlacement, Origin
from twisted.logger import capturedLogs

from kraken.core import Digest, MetaInfo
from kraken.core.peer import PeerInfo
from kraken.p2p.scheduler import Stats

DATA = b"hello, origin! " * 3
DIGEST = Digest.from_bytes(DATA)
NS = "library/ubuntu"


def blob_url(digest: Digest | str = DIGEST, ns: str = NS) -> str:
    return f"/namespace/{ns}/blobs/{digest}"


def start(origin: Origin, digest: Digest | str = DIGEST, ns: str = NS) -> str:
    code, headers, body = origin.request("POST", blob_url(digest, ns) + "/uploads")
    assert code == 200, body
    (uid,) = headers.getRawHeaders(b"location")
    return uid.decode()


def patch(origin: Origin, uid: str, data: bytes, start: int = 0, end: int | None = None, digest=DIGEST, ns=NS):
    end = start + len(data) if end is None else end
    return origin.request(
        "PATCH",
        f"{blob_url(digest, ns)}/uploads/{uid}",
        data=data,
        headers={b"Content-Range": [f"{start}-{end}".encode()]},
    )


def commit(origin: Origin, uid: str, digest=DIGEST, ns=NS):
    return origin.request("PUT", f"{blob_url(digest, ns)}/uploads/{uid}")


def upload(origin: Origin, data: bytes = DATA, ns: str = NS) -> Digest:
    digest = Digest.from_bytes(data)
    uid = start(origin, digest, ns)
    assert patch(origin, uid, data, digest=digest, ns=ns)[0] == 204
    code, _, body = commit(origin, uid, digest, ns)
    assert code == 201, body
    return digest


def test_health(origin: Origin) -> None:
    code, _, body = origin.request("GET", "/health")
    assert (code, body) == (200, b"OK\n")


def test_stats_are_the_schedulers_counters(origin: Origin) -> None:
    code, _, body = origin.request("GET", "/stats")
    # No scheduler given: only the blob questions this app answered.
    assert (code, json.loads(body)) == (200, {"stat_batches": 0, "stat_batch_digests": 0, "blob_heads": 0})
    origin.serve(advertise="o:1").seeds_as(None, lambda: Stats(bytes_out=7, pieces_out=1))
    code, _, body = origin.request("GET", "/stats")
    assert code == 200
    assert json.loads(body)["bytes_out"] == 7 and json.loads(body)["pieces_out"] == 1


def test_upload_in_chunks_then_read(origin: Origin) -> None:
    uid = start(origin)
    assert patch(origin, uid, DATA[:10])[0] == 204
    assert patch(origin, uid, DATA[10:], start=10)[0] == 204
    code, _, _ = commit(origin, uid)
    assert code == 201

    code, headers, body = origin.request("GET", blob_url())
    assert (code, body) == (200, DATA)
    assert headers.getRawHeaders(b"content-type") == [b"application/octet-stream"]
    assert not os.listdir(os.path.join(origin.root, "uploads")), "the upload is gone after commit"


def test_head_gives_size_and_no_body(origin: Origin) -> None:
    upload(origin)
    code, headers, body = origin.request("HEAD", blob_url())
    assert (code, body) == (200, b"")
    assert headers.getRawHeaders(b"content-length") == [str(len(DATA)).encode()]


def test_range_request(origin: Origin) -> None:
    upload(origin)
    code, headers, body = origin.request("GET", blob_url(), headers={b"Range": [b"bytes=2-6"]})
    assert (code, body) == (206, DATA[2:7])
    assert headers.getRawHeaders(b"content-range") == [f"bytes 2-6/{len(DATA)}".encode()]
    code, _, _ = origin.request("GET", blob_url(), headers={b"Range": [b"bytes=1000-2000"]})
    assert code == 416


def test_get_records_access_time(origin: Origin) -> None:
    upload(origin)
    origin.clock.advance(1234)
    assert origin.request("GET", blob_url())[0] == 200
    blob_dir = os.path.dirname(origin.store.blob_path(DIGEST))
    with open(os.path.join(blob_dir, "access")) as f:
        assert float(f.read()) == 1234.0


def test_metainfo(origin: Origin) -> None:
    upload(origin)
    code, headers, body = origin.request("GET", blob_url() + "/metainfo")
    assert code == 200
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    info = MetaInfo.from_json(body)
    assert info == MetaInfo.from_bytes(DATA, PIECE)
    assert json.loads(body)["digest"] == str(DIGEST)


def test_missing_blob_is_404(origin: Origin) -> None:
    for method, suffix in [("GET", ""), ("HEAD", ""), ("GET", "/metainfo")]:
        code, _, body = origin.request(method, blob_url() + suffix)
        assert code == 404
        if method == "GET":
            assert str(DIGEST).encode() in body


def test_locations(origin: Origin) -> None:
    code, headers, _ = origin.request("GET", f"/blobs/{DIGEST}/locations")
    assert code == 200
    assert headers.getRawHeaders(b"origin-locations") == [ADVERTISE.encode()]


def peers_of(origin: Origin, url: str) -> list[PeerInfo]:
    code, headers, body = origin.request("GET", url)
    assert code == 200, body
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    doc = json.loads(body)
    assert list(doc) == ["peers"]
    return [PeerInfo.from_json(p) for p in doc["peers"]]


@pytest.mark.parametrize("url", ["/blobs/{d}/peers", "/namespace/library/ubuntu/blobs/{d}/peers"])
def test_peers_is_this_origin_once_it_holds_the_blob(origin: Origin, url: str) -> None:
    assert peers_of(origin, url.format(d=DIGEST)) == []
    upload(origin)
    assert peers_of(origin, url.format(d=DIGEST)) == [PEER]
    assert peers_of(origin, url.format(d=Digest.from_bytes(b"other"))) == []


def test_peers_without_a_p2p_address_is_empty(origin: Origin) -> None:
    upload(origin)
    origin.serve()
    assert peers_of(origin, f"/blobs/{DIGEST}/peers") == []


def test_peers_always_says_complete_origin(origin: Origin) -> None:
    upload(origin)
    agent_like = PeerInfo(PEER.peer_id, "10.0.0.6", 15001)
    origin.serve(agent_like)
    [got] = peers_of(origin, f"/blobs/{DIGEST}/peers")
    assert (got.ip, got.complete, got.origin) == ("10.0.0.6", True, True)


def test_start_when_stored_is_409(origin: Origin) -> None:
    upload(origin)
    code, _, body = origin.request("POST", blob_url() + "/uploads")
    assert code == 409
    assert b"already exists" in body


def test_patch_after_blob_stored_is_409_and_drops_the_upload(origin: Origin) -> None:
    late = start(origin)
    upload(origin)
    assert patch(origin, late, DATA)[0] == 409
    assert not os.listdir(os.path.join(origin.root, "uploads"))


def test_concurrent_uploads_of_one_blob_both_succeed(origin: Origin) -> None:
    first, second = start(origin), start(origin)
    assert patch(origin, first, DATA)[0] == 204
    assert patch(origin, second, DATA)[0] == 204
    assert commit(origin, first)[0] == 201
    assert commit(origin, second)[0] == 201
    assert origin.request("GET", blob_url())[2] == DATA
    assert not os.listdir(os.path.join(origin.root, "uploads"))


def test_digest_mismatch_stores_nothing(origin: Origin) -> None:
    other = Digest.from_bytes(b"something else")
    uid = start(origin, other)
    assert patch(origin, uid, DATA, digest=other)[0] == 204
    code, _, body = commit(origin, uid, other)
    assert code == 400
    assert str(DIGEST).encode() in body and str(other).encode() in body
    assert origin.request("GET", blob_url(other))[0] == 404
    assert origin.request("GET", blob_url(DIGEST))[0] == 404
    assert patch(origin, uid, b"x", digest=other)[0] == 404, "the failed upload is gone"
    assert not os.listdir(os.path.join(origin.root, "uploads"))


def test_out_of_order_patch_is_416(origin: Origin) -> None:
    uid = start(origin)
    code, _, body = patch(origin, uid, DATA[5:], start=5)
    assert code == 416
    assert b"0 bytes" in body
    assert patch(origin, uid, DATA)[0] == 204, "the upload is unharmed"
    assert commit(origin, uid)[0] == 201


def test_truncated_body_is_400_and_keeps_the_old_size(origin: Origin) -> None:
    uid = start(origin)
    assert patch(origin, uid, DATA[:4])[0] == 204
    code, _, body = patch(origin, uid, DATA[4:10], start=4, end=20)
    assert code == 400
    assert b"ended after 6 of 16" in body
    assert origin.store.uploads.size(uid) == 4
    assert patch(origin, uid, DATA[4:], start=4)[0] == 204
    assert commit(origin, uid)[0] == 201
    assert origin.request("GET", blob_url())[2] == DATA


def test_body_longer_than_range_is_400(origin: Origin) -> None:
    uid = start(origin)
    code, _, body = patch(origin, uid, DATA, start=0, end=4)
    assert code == 400
    assert b"more than Content-Range" in body
    assert origin.store.uploads.size(uid) == 0


@pytest.mark.parametrize("header", [None, b"bytes 0-4/4", b"4-0", b"a-b", b"0-"])
def test_bad_content_range_is_400(origin: Origin, header: bytes | None) -> None:
    uid = start(origin)
    headers = {} if header is None else {b"Content-Range": [header]}
    code, _, body = origin.request("PATCH", f"{blob_url()}/uploads/{uid}", data=b"abcd", headers=headers)
    assert code == 400
    assert b"Content-Range" in body


@pytest.mark.parametrize("uid", ["0" * 32, "not-a-uid"])
def test_unknown_upload_is_404(origin: Origin, uid: str) -> None:
    assert patch(origin, uid, DATA)[0] == 404
    code, _, body = commit(origin, uid)
    assert code == 404
    assert b"unknown upload" in body


BAD_DIGESTS = ["sha256:zz", "md5:" + "0" * 32, "sha256:" + "A" * 64, "0" * 64, "sha256:" + "0" * 63]


NAMESPACE_ROUTES = [
    ("GET", "/namespace/{ns}/blobs/{d}/peers"),
    ("POST", "/namespace/{ns}/blobs/{d}/uploads"),
    ("PATCH", "/namespace/{ns}/blobs/{d}/uploads/" + "0" * 32),
    ("PUT", "/namespace/{ns}/blobs/{d}/uploads/" + "0" * 32),
    ("GET", "/namespace/{ns}/blobs/{d}"),
    ("HEAD", "/namespace/{ns}/blobs/{d}"),
    ("GET", "/namespace/{ns}/blobs/{d}/metainfo"),
]


def call_route(origin: Origin, method: str, url: str, **values: str):
    headers = {b"Content-Range": [b"0-1"]} if method == "PATCH" else {}
    return origin.request(method, url.format(**values), data=b"x" if method == "PATCH" else None, headers=headers)


@pytest.mark.parametrize("bad", BAD_DIGESTS)
@pytest.mark.parametrize(
    "method,url", [("GET", "/blobs/{d}/locations"), ("GET", "/blobs/{d}/peers"), *NAMESPACE_ROUTES]
)
def test_bad_digest_is_400(origin: Origin, bad: str, method: str, url: str) -> None:
    code, _, body = call_route(origin, method, url, ns="a/b", d=bad)
    assert code == 400
    if method != "HEAD":
        assert b"invalid digest" in body


def test_namespaces_with_slashes(origin: Origin) -> None:
    ns = "team-a/deep/nested/repo"
    digest = upload(origin, b"nested", ns=ns)
    assert origin.request("GET", blob_url(digest, ns))[2] == b"nested"
    assert origin.request("GET", blob_url(digest, "other"))[2] == b"nested", "blobs are content-addressed"


BAD_NAMESPACES = ["team%20a/repo", "Upper/case", "a//b", "a/", "-a", "a..b", "x" * 256, "a/%2E%2E/b"]


@pytest.mark.parametrize("ns", BAD_NAMESPACES)
@pytest.mark.parametrize("method,url", NAMESPACE_ROUTES)
def test_bad_namespace_is_400_and_stores_nothing(origin: Origin, ns: str, method: str, url: str) -> None:
    code, _, body = call_route(origin, method, url, ns=ns, d=str(DIGEST))
    assert code == 400
    if method != "HEAD":
        assert body.startswith(b"invalid namespace ") and b"a namespace is a repository name" in body
    assert origin.request("HEAD", blob_url())[0] == 404


def test_unknown_route_and_method(origin: Origin) -> None:
    code, _, body = origin.request("GET", "/nothing/here")
    assert code == 404
    assert b"<html" not in body.lower()
    code, headers, _ = origin.request("DELETE", blob_url())
    assert code == 405
    assert b"GET" in headers.getRawHeaders(b"allow")[0]


def test_unexpected_error_is_500_without_traceback(origin: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(digest: Digest) -> int:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(origin.store, "stat", broken)
    with capturedLogs() as events:
        code, _, body = origin.request("GET", blob_url())
    assert (code, body) == (500, b"internal error\n")
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["method"] == "GET"
    assert failures[0]["log_failure"].check(RuntimeError)


# -- staged uploads: the digest named at the commit (kraken.proxy.stage) --


def staged_start(origin: Origin, ns: str = NS) -> str:
    code, headers, body = origin.request("POST", f"/namespace/{ns}/staged-uploads")
    assert code == 200, body
    (uid,) = headers.getRawHeaders(b"location")
    return uid.decode()


def staged_patch(origin: Origin, uid: str, data: bytes, start: int = 0, ns: str = NS):
    return origin.request(
        "PATCH",
        f"/namespace/{ns}/staged-uploads/{uid}",
        data=data,
        headers={b"Content-Range": [f"{start}-".encode()]},
    )


def staged_commit(origin: Origin, uid: str, digest: Digest = DIGEST, ns: str = NS):
    return origin.request("PUT", f"{blob_url(digest, ns)}/staged-uploads/{uid}")


def test_a_staged_upload_is_stored_under_the_digest_named_at_its_commit(origin: Origin) -> None:
    uid = staged_start(origin)
    code, headers, _ = staged_patch(origin, uid, DATA[:10])
    assert code == 204 and headers.getRawHeaders(b"kraken-upload-size") == [b"10"]
    code, headers, _ = staged_patch(origin, uid, DATA[10:], start=10)
    assert code == 204 and headers.getRawHeaders(b"kraken-upload-size") == [str(len(DATA)).encode()]
    assert staged_commit(origin, uid)[0] == 201
    assert origin.request("GET", blob_url())[2] == DATA
    assert MetaInfo.from_json(origin.request("GET", blob_url() + "/metainfo")[2]).length == len(DATA)


def test_a_staged_chunk_out_of_place_is_416(origin: Origin) -> None:
    uid = staged_start(origin)
    assert staged_patch(origin, uid, DATA, start=5)[0] == 416
    assert staged_patch(origin, uid, DATA)[0] == 204


@pytest.mark.parametrize("header", [None, b"abc", b"0-10", b"-5"])
def test_a_staged_chunk_without_an_open_range_is_400(origin: Origin, header: bytes | None) -> None:
    uid = staged_start(origin)
    headers = {} if header is None else {b"Content-Range": [header]}
    assert origin.request("PATCH", f"/namespace/{NS}/staged-uploads/{uid}", data=DATA, headers=headers)[0] == 400


def test_a_staged_upload_of_other_bytes_is_refused_and_stores_nothing(origin: Origin) -> None:
    uid = staged_start(origin)
    staged_patch(origin, uid, b"not the blob")
    code, _, body = staged_commit(origin, uid)
    assert code == 400 and str(DIGEST).encode() in body
    assert origin.request("GET", blob_url())[0] == 404
    assert not os.listdir(os.path.join(origin.root, "uploads"))


def test_a_staged_upload_outside_this_origins_placement_is_421_and_deleted(origin: Origin) -> None:
    origin.serve(placement=FixedPlacement(lambda d: ["elsewhere:15002"], mine=lambda d: False))
    uid = staged_start(origin)
    staged_patch(origin, uid, DATA)
    code, _, body = staged_commit(origin, uid)
    assert code == 421 and b"not in the placement" in body
    assert origin.request("GET", blob_url())[0] == 404
    assert not os.listdir(os.path.join(origin.root, "uploads"))


def test_a_staged_upload_can_be_deleted(origin: Origin) -> None:
    uid = staged_start(origin)
    staged_patch(origin, uid, DATA)
    assert origin.request("DELETE", f"/namespace/{NS}/staged-uploads/{uid}")[0] == 204
    assert origin.request("DELETE", f"/namespace/{NS}/staged-uploads/{uid}")[0] == 204
    assert staged_patch(origin, uid, DATA)[0] == 404
    assert not os.listdir(os.path.join(origin.root, "uploads"))


def test_a_staged_upload_in_a_bad_namespace_is_400(origin: Origin) -> None:
    assert origin.request("POST", "/namespace/Bad_Name/staged-uploads")[0] == 400
