"""python-dxf (a requests-based registry client) against the herd.

Synchronous tests: python-dxf blocks, and the herd is another process.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

from dxf import DXF

from kraken.cli.image import write_layout

MIB = 1 << 20


def unique(name: str) -> str:
    return f"integration/{name}-{uuid.uuid4().hex[:8]}"


def random_file(path: str, size: int) -> str:
    """Write ``size`` random bytes to ``path`` in chunks; returns the digest."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MIB))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return "sha256:" + h.hexdigest()


def pull_digest(dxf: DXF, digest: str) -> tuple[str, int]:
    h = hashlib.sha256()
    total = 0
    for chunk in dxf.pull_blob(digest):
        h.update(chunk)
        total += len(chunk)
    return "sha256:" + h.hexdigest(), total


def test_push_and_pull_a_64mib_blob(herd: Any, tmp_path: Any) -> None:
    dxf = DXF(herd.registry, unique("dxf-blob"), insecure=True)
    path = str(tmp_path / "blob")
    digest = random_file(path, 64 * MIB)
    assert dxf.push_blob(path) == digest
    assert dxf.blob_size(digest) == 64 * MIB
    assert pull_digest(dxf, digest) == (digest, 64 * MIB)
    # Pushed as a chunked (Transfer-Encoding) body with a known digest.
    data = [os.urandom(MIB) for _ in range(3)]
    streamed = "sha256:" + hashlib.sha256(b"".join(data)).hexdigest()
    assert dxf.push_blob(data=iter(data), digest=streamed, check_exists=False) == streamed
    assert pull_digest(dxf, streamed) == (streamed, 3 * MIB)


def test_aliases(herd: Any, tmp_path: Any) -> None:
    dxf = DXF(herd.registry, unique("dxf-alias"), insecure=True)
    digests = []
    for i in range(3):
        path = str(tmp_path / f"b{i}")
        random_file(path, 1000 + i)
        digests.append(dxf.push_blob(path))
    manifest = dxf.set_alias("first", *digests)
    dxf.set_alias("second", digests[0])
    assert dxf.get_alias("first") == digests
    assert dxf.get_alias("second") == [digests[0]]
    assert dxf.get_alias("first", sizes=True) == [(d, 1000 + i) for i, d in enumerate(digests)]
    assert sorted(dxf.list_aliases()) == ["first", "second"]
    assert dxf.get_manifest("first") == manifest
    assert dxf.get_digest("first") == digests[0]  # the config's digest (dxf uses the first blob)
    _, head = dxf.head_manifest_and_response("first")
    assert head.headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()
    # list_aliases pages with n and follows Link.
    for i in range(3):
        dxf.set_alias(f"tag{i}", digests[1])
    assert sorted(dxf.list_aliases(batch_size=2)) == ["first", "second", "tag0", "tag1", "tag2"]


def test_whole_image_through_the_dxf_api(herd: Any, tmp_path: Any) -> None:
    layout = write_layout(str(tmp_path / "layout"), layers=3, random_layer_size="8MiB", seed=f"dxf-{uuid.uuid4()}")
    repo = unique("dxf-image")
    dxf = DXF(herd.registry, repo, insecure=True)
    for blob in (layout.config, *layout.layers):
        assert dxf.push_blob(layout.blob_path(blob.digest)) == blob.digest
    manifest = layout.read_blob(layout.manifest.digest).decode()
    dxf.set_manifest("v1", manifest)

    got, response = dxf.get_manifest_and_response("v1")
    assert got == manifest
    assert response.headers["Docker-Content-Digest"] == layout.manifest.digest
    assert response.headers["Content-Type"] == layout.manifest.media_type
    assert dxf.get_digest("v1") == layout.config.digest
    _, head = dxf.head_manifest_and_response("v1")
    assert head.headers["Docker-Content-Digest"] == layout.manifest.digest
    assert head.headers["Content-Length"] == str(layout.manifest.size)
    assert dxf.get_alias("v1") == [layer.digest for layer in layout.layers]
    assert json.loads(got)["config"]["digest"] == layout.config.digest
    for blob in (layout.config, *layout.layers):
        assert pull_digest(dxf, blob.digest) == (blob.digest, blob.size)
    # Another client, another repository: the same blobs are mounted, not re-sent.
    other = DXF(herd.registry, unique("dxf-image-copy"), insecure=True)
    for blob in (layout.config, *layout.layers):
        other.mount_blob(repo, blob.digest)
    other.set_manifest("copy", manifest)
    assert other.get_manifest("copy") == manifest
    assert pull_digest(other, layout.layers[0].digest) == (layout.layers[0].digest, layout.layers[0].size)
