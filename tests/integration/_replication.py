"""Plain-HTTP helpers of the replication tests: blobs uploaded to an origin, tags put on and read from a
build-index, small images built in memory (urllib: these tests are synchronous and run real daemons)."""

from __future__ import annotations

import hashlib
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from kraken.registry.manifests import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST

from .test_origin_cluster import Daemons

TIMEOUT = 30.0


@pytest.fixture(name="daemons")
def running_daemons(tmp_path: Any) -> Iterator[Daemons]:
    """Daemons started by the test, stopped at its end (pass or fail: teardown resumes here)."""
    running = Daemons(str(tmp_path))
    yield running
    running.stop_all()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _request(
    method: str,
    url: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    opener: urllib.request.OpenerDirector | None = None,
) -> Any:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    return (opener or urllib.request.build_opener()).open(req, timeout=TIMEOUT)


def upload_blob(origin: str, namespace: str, data: bytes, opener: urllib.request.OpenerDirector | None = None) -> str:
    """Upload ``data`` to the origin at ``origin`` (its upload API: start, one chunk, commit); its digest.
    ``opener``: how to reach it (an HTTPS one with a client certificate)."""
    d = digest_of(data)
    base = f"{origin}/namespace/{namespace}/blobs/{d}/uploads"
    with _request("POST", base, opener=opener) as r:
        uid = r.headers["Location"]
    with _request("PATCH", f"{base}/{uid}", data, {"Content-Range": f"0-{len(data)}"}, opener):
        pass
    with _request("PUT", f"{base}/{uid}", b"", opener=opener):
        pass
    return d


def origin_has(origin: str, namespace: str, digest: str) -> bool:
    try:
        with _request("HEAD", f"{origin}/namespace/{namespace}/blobs/{digest}") as r:
            return int(r.status) == 200
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        raise


def manifest_of(config: bytes, layer: bytes) -> bytes:
    """A Docker image manifest naming ``config`` and the one ``layer``."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [{"mediaType": DOCKER_LAYER, "digest": digest_of(layer), "size": len(layer)}],
        }
    ).encode()


def image(origin: str, namespace: str, seed: str, *, layer: bytes | None = None) -> tuple[str, list[str]]:
    """A config, one layer (``layer``, or a small one from ``seed``) and their manifest uploaded to the
    origin: the manifest's digest, and every digest."""
    config = json.dumps({"seed": seed}).encode()
    layer = f"layer of {seed}".encode() * 64 if layer is None else layer
    blobs = [upload_blob(origin, namespace, b) for b in (config, layer, manifest_of(config, layer))]
    return blobs[-1], blobs


def put_tag(
    build_index: str, repo: str, tag: str, digest: str, opener: urllib.request.OpenerDirector | None = None
) -> int:
    url, headers = f"{build_index}/repositories/{repo}/tags/{tag}", {"Content-Type": "text/plain"}
    with _request("PUT", url, digest.encode(), headers, opener) as r:
        return int(r.status)


def get_tag(build_index: str, repo: str, tag: str) -> str | None:
    try:
        with _request("GET", f"{build_index}/repositories/{repo}/tags/{tag}") as r:
            return str(r.read().decode("ascii").strip())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


class Every:
    """A line consumer: True once ``pattern``'s first group has matched each of ``wanted``."""

    def __init__(self, pattern: re.Pattern[str], wanted: set[str]) -> None:
        self.pattern, self.missing = pattern, set(wanted)

    def __call__(self, line: str) -> bool:
        m = self.pattern.search(line)
        if m:
            self.missing.discard(m.group(1))
        return not self.missing
