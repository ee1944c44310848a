"""The origin with a full store: 507 at once, in plain text, the upload
deleted, and the next upload working as soon as there is space; a proxy's
ClusterClient tries each location once and does not repeat the round."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from full_disk import Room, files_under, filling_open, no_space
from origin_harness import FixedPlacement, Origin
from results import result_of
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from kraken.core import Digest, PieceLengthRule
from kraken.net import HTTPClientConfig, HTTPStatusError
from kraken.net.server import make_site
from kraken.origin.client import ClusterClient
from kraken.origin.http import NO_SPACE_MESSAGE, OriginHTTP
from kraken.origin.node import OriginNode
from kraken.store import CAStore
from kraken.workers import ThreadWorker

NS = "team/app"
DATA = random.Random(3).randbytes(50_000)
DIGEST = Digest.from_bytes(DATA)
UPLOADS = f"/namespace/{NS}/blobs/{DIGEST}/uploads"


def start(origin: Origin) -> str:
    code, headers, _ = origin.request("POST", UPLOADS)
    assert code == 200
    return str(headers.getRawHeaders(b"location")[0].decode())


def patch(origin: Origin, uid: str, data: bytes = DATA) -> tuple[int, bytes]:
    code, _, body = origin.request(
        "PATCH", f"{UPLOADS}/{uid}", data=data, headers={b"Content-Range": [f"0-{len(data)}".encode()]}
    )
    return code, body


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_chunk_that_fills_the_store_is_507_and_the_upload_is_gone(
    origin: Origin, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    import kraken.store.uploads as uploads_module

    uid = start(origin)
    monkeypatch.setattr(uploads_module, "open", filling_open(Room(10_000, code)), raising=False)
    status, body = patch(origin, uid)
    assert (status, body) == (507, NO_SPACE_MESSAGE.encode() + b"\n")
    assert body.startswith(b"no space left on device")
    assert files_under(Path(origin.root) / "uploads") == []
    assert origin.request("PUT", f"{UPLOADS}/{uid}")[0] == 404, "the upload was deleted"
    # Space is back: the next upload works, nothing remembered.
    monkeypatch.delattr(uploads_module, "open")
    uid = start(origin)
    assert patch(origin, uid)[0] == 204
    assert origin.request("PUT", f"{UPLOADS}/{uid}")[0] == 201
    assert origin.request("GET", f"/namespace/{NS}/blobs/{DIGEST}")[2] == DATA


def test_a_commit_that_fills_the_store_is_507_and_leaves_nothing(
    origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kraken.store.cas as cas_module

    uid = start(origin)
    assert patch(origin, uid)[0] == 204
    monkeypatch.setattr(cas_module, "open", filling_open(Room(0)), raising=False)
    code, _, body = origin.request("PUT", f"{UPLOADS}/{uid}")
    assert code == 507 and body.startswith(b"no space left on device")
    assert files_under(origin.root) == []
    monkeypatch.delattr(cas_module, "open")
    uid = start(origin)
    patch(origin, uid)
    assert origin.request("PUT", f"{UPLOADS}/{uid}")[0] == 201


def test_a_refused_body_deletes_its_upload(origin: Origin) -> None:
    uid = start(origin)
    refusal = result_of(origin.http.body_refused(b"PATCH", f"{UPLOADS}/{uid}".encode(), Failure(no_space())))
    assert refusal.status == 507
    assert refusal.body == NO_SPACE_MESSAGE.encode() + b"\n"
    assert os.listdir(Path(origin.root) / "uploads") == []
    other = result_of(
        origin.http.body_refused(b"PATCH", b"/namespace/x/blobs/y/uploads/not-an-id", Failure(OSError(5, "EIO")))
    )
    assert other.status == 500


# -- real sockets: the proxy's client against two origins whose spools meet a full disk ----------------------------


class Member:
    def __init__(self, root: Path, reactor: Any, worker: ThreadWorker) -> None:
        self.store = CAStore(str(root), worker=worker, piece_rule=PieceLengthRule(((0, 1 << 20),)), now=reactor.seconds)
        self.site = make_site(None, reactor=reactor, access_log=False, spool=self.store.uploads.spool)  # type: ignore[arg-type]
        self.site.timeOut = None
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.name = f"127.0.0.1:{self.port.getHost().port}"
        self.requests: list[bytes] = []


@pytest_twisted.ensureDeferred
async def test_a_push_to_full_origins_is_answered_at_once_and_tried_once_per_location(
    reactor: Any, http: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kraken.store.spool as spool_module

    pool = ThreadPool(1, 2, "test-no-space-io")
    pool.start()
    worker = ThreadWorker(reactor, pool)
    members = [Member(tmp_path / f"origin-{i}", reactor, worker) for i in range(2)]
    names = [m.name for m in members]
    for m in members:
        app = OriginHTTP(OriginNode(m.store, advertise=m.name, placement=FixedPlacement(lambda d: list(names))))
        m.site.resource = app.resource()
        m.site.body_refused = app.body_refused  # type: ignore[attr-defined]
        real = app.resource().render

        def counting(request: Any, real: Any = real, m: Member = m) -> Any:
            m.requests.append(request.method)
            return real(request)

        m.site.resource.render = counting  # type: ignore[method-assign]
    real_write = spool_module._write
    room = Room(1 << 20)

    def filling_write(f: Any, hasher: Any, batch: list[bytes]) -> None:
        data = b"".join(batch)
        fits = room.take(len(data))
        real_write(f, hasher, [data[:fits]])
        if fits < len(data):
            raise no_space()

    monkeypatch.setattr(spool_module, "_write", filling_write)
    size = 24 << 20  # well past the spool's high water mark: the connection is paused when the disk fills
    path = tmp_path / "blob"
    data = random.Random(5).randbytes(size)
    path.write_bytes(data)
    digest = Digest.from_bytes(data)
    client = ClusterClient(
        http=http,
        origins=[f"http://{names[0]}"],
        clock=reactor,
        config=HTTPClientConfig(retries=3, backoff=0.01, max_backoff=0.01),
        worker=worker,
        rng=random.Random(1),
    )
    try:
        with pytest.raises(HTTPStatusError) as caught:
            await client.upload(NS, digest, str(path), size)
        assert caught.value.code == 507
        assert b"no space left on device" in caught.value.body
        # One upload per location (its PATCH answered by the refusal, before the app): no round repeated.
        assert [[r for r in m.requests if r != b"GET"] for m in members] == [[b"POST"], [b"POST"]]
        assert client.failed_rounds == 1
        for m in members:
            assert files_under(m.store._root) == [], "no upload or spool file left behind"
        # Space is back: the same push works at once.
        room.left = None
        await client.upload(NS, digest, str(path), size)
        assert await members[0].store.stat(digest) == size
    finally:
        for m in members:
            await m.port.stopListening()
        pool.stop()
