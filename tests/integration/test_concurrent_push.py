"""Several skopeo processes push the same new image at once, to different repositories and to one.

The blobs are new to the herd, so the uploads of the same digests race each
other into the origin's store; every push must succeed and every repository
must then serve the exact image.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest_twisted
from twisted.internet import defer

from kraken.cli.image import write_layout

from ._tools import check_dir_copy, run_process

PUSHERS = 4


def push_command(src: str, dest: str) -> list[str]:
    return ["skopeo", "copy", "--dest-tls-verify=false", "--preserve-digests", src, dest]


@pytest_twisted.ensureDeferred
async def test_concurrent_pushes_of_the_same_image(herd: Any, reactor: Any, tmp_path: Any) -> None:
    layout = write_layout(str(tmp_path / "layout"), layers=3, random_layer_size="16MiB", seed=f"conc-{uuid.uuid4()}")
    base = f"integration/concurrent-{uuid.uuid4().hex[:8]}"
    targets = [f"{base}/r{i}:v1" for i in range(PUSHERS)] + [f"{base}/shared:t{i}" for i in range(PUSHERS)]
    runs = [
        defer.Deferred.fromCoroutine(
            run_process(reactor, push_command(f"oci:{layout.path}:v1", f"docker://{herd.registry}/{target}"))
        )
        for target in targets
    ]
    results = await defer.gatherResults(runs, consumeErrors=True)
    for target, (code, _out, err) in zip(targets, results, strict=True):
        assert code == 0, f"push to {target} failed: {err.decode(errors='replace')[-3000:]}"

    expected_manifest = layout.read_blob(layout.manifest.digest)
    expected_blobs = {layout.config.digest, *(layer.digest for layer in layout.layers)}
    for i, target in enumerate(targets):
        out = tmp_path / f"pulled{i}"
        code, _out, err = await run_process(
            reactor, ["skopeo", "copy", "--src-tls-verify=false", f"docker://{herd.registry}/{target}", f"dir:{out}"]
        )
        assert code == 0, f"pull of {target} failed: {err.decode(errors='replace')[-3000:]}"
        manifest, blobs = check_dir_copy(str(out))
        assert manifest == expected_manifest
        assert blobs == expected_blobs
