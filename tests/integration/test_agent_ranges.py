"""Range GETs through agents that have not downloaded the blob: a multi-piece blob (1 MiB pieces) pushed to the
proxy with python-dxf is asked of agents in parts, each answered 206 with ``Content-Range`` and exactly those
bytes, streamed from the download in progress (docs/operations.md section 26); a whole GET on another agent is the
blob; a range past the end is 416. Synchronous: the herd is another process."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import uuid
from typing import Any

from dxf import DXF

SIZE = (5 << 20) + 12345  # six pieces of 1 MiB, the last one short


def _push(herd: Any, repo: str, data: bytes, tmp_path: Any) -> str:
    """The blob pushed to the proxy with python-dxf; its digest."""
    path = tmp_path / "blob"
    path.write_bytes(data)
    digest: str = DXF(herd.registry, repo, insecure=True).push_blob(str(path))
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    return digest


def _get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def test_range_gets_of_a_blob_the_agents_are_still_downloading(herd: Any, tmp_path: Any) -> None:
    repo = f"integration/ranges-{uuid.uuid4().hex[:8]}"
    data = os.urandom(SIZE)
    digest = _push(herd, repo, data, tmp_path)

    # Past the end: 416 with the size, in OCI error JSON (this starts agent 2's download).
    status, headers, body = _get(
        f"http://{herd.agent_registry(2)}/v2/{repo}/blobs/{digest}", {"Range": f"bytes={SIZE}-"}
    )
    assert (status, headers["content-range"]) == (416, f"bytes */{SIZE}") and b"RANGE_INVALID" in body

    first = 3 * (1 << 20) + 17  # inside the fourth piece
    status, headers, body = _get(
        f"http://{herd.agent_registry(0)}/v2/{repo}/blobs/{digest}", {"Range": f"bytes={first}-"}
    )
    assert (status, headers["content-range"], headers["content-length"]) == (
        206, f"bytes {first}-{SIZE - 1}/{SIZE}", str(SIZE - first)
    )  # fmt: skip
    assert body == data[first:] and headers["docker-content-digest"] == digest
    # Streamed from the download in progress: a blob served from the cache (a static file) has a Last-Modified.
    assert "last-modified" not in headers and headers["etag"] == f'"{digest}"'

    status, headers, body = _get(
        f"http://{herd.agent_registry(1)}/v2/{repo}/blobs/{digest}", {"Range": "bytes=1000-2099999"}
    )
    assert (status, headers["content-range"], body) == (206, f"bytes 1000-2099999/{SIZE}", data[1000:2100000])
    assert "last-modified" not in headers

    status, _, body = _get(f"http://{herd.agent_registry(2)}/v2/{repo}/blobs/{digest}", {})
    assert status == 200 and hashlib.sha256(body).hexdigest() == digest.split(":")[1]
