"""sha512 end to end on a real herd: blobs and a manifest addressed by sha512 pushed to the proxy over plain HTTP
(python-dxf hashes with sha256 only: its pulls refuse any other algorithm), then pulled back through two agents,
whose every byte comes through the P2P scheduler and is checked against the sha512 before it is served.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
import uuid
from typing import Any

from ._tools import Target

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER_SIZE = 3 * 1024 * 1024 + 12_345  # several pieces, the last one short


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


def call(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    return urllib.request.urlopen(request, timeout=120)


def push_blob(registry: str, repo: str, data: bytes) -> None:
    """POST, one PATCH of the first half, and a PUT ``?digest=sha512:...`` with the rest."""
    location = call("POST", f"http://{registry}/v2/{repo}/blobs/uploads/", b"").headers["Location"]
    location = location if location.startswith("http") else f"http://{registry}{location}"
    half = len(data) // 2
    octets = {"Content-Type": "application/octet-stream"}
    patched = call("PATCH", location, data[:half], {**octets, "Content-Range": f"0-{half - 1}"})
    location = patched.headers["Location"]
    location = location if location.startswith("http") else f"http://{registry}{location}"
    sep = "&" if "?" in location else "?"
    headers = {**octets, "Content-Range": f"{half}-{len(data) - 1}"}
    done = call("PUT", f"{location}{sep}digest={sha512(data)}", data[half:], headers)
    assert done.status == 201 and done.headers["Docker-Content-Digest"] == sha512(data)


def stored(state_dir: str, member: str, digest: str) -> bool:
    hex_ = digest.split(":", 1)[1]
    return os.path.exists(os.path.join(state_dir, member, "cache", "sha512", hex_[:2], hex_[2:4], hex_, "data"))


def test_sha512_image_pushed_raw_and_pulled_through_two_agents(herd: Any) -> None:
    target = Target("plain", herd)
    repo = f"integration/sha512-{uuid.uuid4().hex[:8]}"
    layer = os.urandom(LAYER_SIZE)
    rootfs = {"type": "layers", "diff_ids": [sha512(layer)]}
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": rootfs}).encode()
    config_ref = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": sha512(config),
        "size": len(config),
    }
    layer_ref = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha512(layer), "size": len(layer)}
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_ref, "layers": [layer_ref]}
    manifest = json.dumps(doc).encode()
    for blob in (config, layer):
        push_blob(herd.registry, repo, blob)
    url = f"{herd.url}/v2/{repo}/manifests/{sha512(manifest)}?tag=v1"
    put = call("PUT", url, manifest, {"Content-Type": OCI_MANIFEST})
    assert put.status == 201 and put.headers["Docker-Content-Digest"] == sha512(manifest)
    for blob in (config, layer, manifest):
        assert stored(herd.state_dir, "origin", sha512(blob)), "the origin keeps sha512 blobs under cache/sha512/"

    for k in (0, 1):
        before = target.stats(herd.agent_api(k))
        agent = f"http://{herd.agent_registry(k)}/v2/{repo}"
        got = call("GET", f"{agent}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert got.headers["Docker-Content-Digest"] == sha512(manifest) and got.read() == manifest
        for blob in (config, layer):
            resp = call("GET", f"{agent}/blobs/{sha512(blob)}")
            assert resp.headers["Docker-Content-Digest"] == sha512(blob)
            body = resp.read()
            assert hashlib.sha512(body).digest() == hashlib.sha512(blob).digest() and body == blob
            assert stored(herd.state_dir, f"agent-{k}", sha512(blob))
        after = target.stats(herd.agent_api(k))
        # Every byte of the image came to the agent through the P2P scheduler.
        assert after["bytes_in"] - before["bytes_in"] == len(manifest) + len(config) + len(layer)
