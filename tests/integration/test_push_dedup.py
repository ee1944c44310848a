"""A second push of the same image uploads no blob twice.

skopeo talks to the herd through a byte-counting TCP relay (Twisted's
port forwarder) started by the test, so what the client really sent is
measured on the wire: the first push must carry the 64 MiB layer, a second
push to the same repository and a push to a new repository must not (a
registry that answered "blob unknown" would get the whole layer again). The
request lines seen on the wire and skopeo's own debug log must show no upload
either, and the new repository must then serve the whole image.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

import pytest_twisted

from kraken.cli.image import write_layout

from ._tools import CountingRelayFactory, check_dir_copy, run_process

MIB = 1 << 20


def uploads(requests: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Requests that move blob content: PATCH/PUT to an upload, or a POST that is not a cross-repo mount."""
    found = []
    for method, target in requests:
        if "/blobs/uploads/" not in target:
            continue
        if method in ("PATCH", "PUT") or (method == "POST" and "mount=" not in target):
            found.append((method, target))
    return found


def config_was_absent(log: str, repo: str, digest: str) -> bool:
    """skopeo's debug log says its HEAD of ``digest`` in ``repo`` found nothing."""
    head = "HEAD http://"
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if head in line and f"/v2/{repo}/blobs/{digest}" in line:
            return any("... not present" in later for later in lines[i + 1 : i + 3])
    return False


async def skopeo(reactor: Any, *args: str) -> str:
    code, out, err = await run_process(reactor, ["skopeo", "--debug", *args])
    log = out.decode(errors="replace") + err.decode(errors="replace")
    assert code == 0, f"skopeo {' '.join(args)} exited {code}:\n{log[-5000:]}"
    return log


@pytest_twisted.ensureDeferred
async def test_second_push_uploads_no_blob_twice(herd: Any, reactor: Any, tmp_path: Any) -> None:
    layout = write_layout(str(tmp_path / "layout"), layers=3, random_layer_size="64MiB", seed=f"dedup-{uuid.uuid4()}")
    blobs = [layout.config.digest, *(layer.digest for layer in layout.layers)]
    relay = CountingRelayFactory(herd.host, herd.proxy_port)
    relay.noisy = False
    port = reactor.listenTCP(0, relay, interface="127.0.0.1")
    try:
        via = f"127.0.0.1:{port.getHost().port}"
        first_repo = f"integration/dedup-{uuid.uuid4().hex[:8]}"
        second_repo = f"integration/dedup-{uuid.uuid4().hex[:8]}-new"
        src = f"oci:{layout.path}:v1"

        # 1. The first push really uploads: the observable works.
        await skopeo(
            reactor, "copy", "--dest-tls-verify=false", "--preserve-digests", src, f"docker://{via}/{first_repo}:v1"
        )
        assert relay.traffic.upstream_bytes >= 64 * MIB, relay.traffic.upstream_bytes

        # 2. Same image, same repository: nothing at all is uploaded.
        # 3. Same image, a repository that never had it: no layer is uploaded (skopeo HEADs the blob in the new
        #    repository or cross-mounts it). skopeo 1.9 never mounts the config: it uploads those few hundred bytes
        #    again if, and only if, the registry scopes blobs per repository and answers its HEAD with 404.
        for repo, tag in ((first_repo, "again"), (second_repo, "v1")):
            relay.traffic.reset()
            log = await skopeo(
                reactor, "copy", "--dest-tls-verify=false", "--preserve-digests", src, f"docker://{via}/{repo}:{tag}"
            )
            sent = relay.traffic.upstream_bytes
            assert sent < 256 * 1024, f"pushing known blobs to {repo} sent {sent} bytes"
            requests = relay.traffic.request_lines()
            assert ("PUT", f"/v2/{repo}/manifests/{tag}") in requests, requests
            for layer in layout.layers:
                assert f"Skipping blob {layer.digest} (already present)" in log, f"skopeo uploaded {layer.digest}"
            moved = uploads(requests)
            if repo == first_repo or not config_was_absent(log, repo, layout.config.digest):
                assert moved == [], f"blob uploads on a second push to {repo}: {moved}"
            else:
                finals = [t for m, t in moved if m == "PUT"]
                assert len(finals) == 1 and quote(layout.config.digest, safe="") in finals[0], moved

        # The new repository serves the whole image (straight from the herd).
        code, _, err = await run_process(
            reactor,
            [
                "skopeo",
                "copy",
                "--src-tls-verify=false",
                f"docker://{herd.registry}/{second_repo}:v1",
                f"dir:{tmp_path / 'pulled'}",
            ],
        )
        assert code == 0, err.decode(errors="replace")
        manifest, pulled = check_dir_copy(str(tmp_path / "pulled"))
        assert manifest == layout.read_blob(layout.manifest.digest)
        assert pulled == set(blobs)
        assert json.loads(manifest)["layers"][0]["size"] == layout.layers[0].size
    finally:
        await port.stopListening()
