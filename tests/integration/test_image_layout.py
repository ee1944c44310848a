"""kraken.cli.image: the OCI layout writer the other integration tests build their images with.

skopeo reading the layout (offline, no registry) is the real check that it is valid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tracemalloc
from typing import Any

from kraken.cli.image import MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX, MEDIA_TYPE_LAYER, MEDIA_TYPE_MANIFEST, write_layout

from ._tools import check_dir_copy, sha256_file, skopeo

MIB = 1 << 20
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_layout_is_valid_and_reproducible(tmp_path: Any) -> None:
    a = write_layout(str(tmp_path / "a"), layers=3, random_layer_size="3MiB", seed="s", index=True)
    b = write_layout(str(tmp_path / "b"), layers=3, random_layer_size="3MiB", seed="s", index=True)
    c = write_layout(str(tmp_path / "c"), layers=3, random_layer_size="3MiB", seed="other", index=True)
    assert a.manifest == b.manifest and a.index == b.index and a.layers == b.layers
    assert not {layer.digest for layer in a.layers} & {layer.digest for layer in c.layers}

    with open(tmp_path / "a" / "oci-layout") as f:
        assert json.load(f) == {"imageLayoutVersion": "1.0.0"}
    blobs_dir = tmp_path / "a" / "blobs" / "sha256"
    assert {f"sha256:{name}" for name in os.listdir(blobs_dir)} == {blob.digest for blob in a.blobs}
    for blob in a.blobs:
        assert sha256_file(a.blob_path(blob.digest)) == blob.digest
        assert os.path.getsize(a.blob_path(blob.digest)) == blob.size

    manifest = json.loads(a.read_blob(a.manifest.digest))
    assert manifest["mediaType"] == MEDIA_TYPE_MANIFEST
    assert manifest["config"] == {"mediaType": MEDIA_TYPE_CONFIG, "digest": a.config.digest, "size": a.config.size}
    assert [(layer["mediaType"], layer["digest"], layer["size"]) for layer in manifest["layers"]] == [
        (MEDIA_TYPE_LAYER, layer.digest, layer.size) for layer in a.layers
    ]
    config = json.loads(a.read_blob(a.config.digest))
    assert config["rootfs"] == {"type": "layers", "diff_ids": list(a.diff_ids)}
    assert list(a.diff_ids) == [layer.digest for layer in a.layers]

    index = json.loads(a.read_blob(a.index.digest))  # type: ignore[union-attr]
    assert index["mediaType"] == MEDIA_TYPE_INDEX
    assert [(m["digest"], m["platform"]["architecture"]) for m in index["manifests"]] == [
        (a.platform_manifests[0].digest, "amd64"),
        (a.platform_manifests[1].digest, "arm64"),
    ]
    arm = json.loads(a.read_blob(a.platform_manifests[1].digest))
    assert [layer["digest"] for layer in arm["layers"]] == list(a.diff_ids)  # the platforms share the layers
    with open(tmp_path / "a" / "index.json") as f:
        refs = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in json.load(f)["manifests"]}
    assert refs == {"v1": a.manifest.digest, "v1-index": a.index.digest}  # type: ignore[union-attr]

    with tarfile.open(a.blob_path(a.layers[0].digest)) as tar:
        members = tar.getmembers()
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
        [big] = [m for m in members if m.isfile()]
        assert big.size == 3 * MIB


def test_random_layer_is_written_without_holding_it_in_memory(tmp_path: Any) -> None:
    tracemalloc.start()
    try:
        layout = write_layout(str(tmp_path / "big"), layers=1, random_layer_size="64MiB", seed="mem")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert layout.layers[0].size > 64 * MIB
    assert peak < 16 * MIB, f"peak Python allocation {peak} bytes while writing a 64 MiB layer"


def test_skopeo_reads_the_layout(tmp_path: Any) -> None:
    layout = write_layout(str(tmp_path / "img"), tag="t1", layers=2, random_layer_size="1MiB", seed="sk", index=True)
    info = json.loads(skopeo("inspect", f"oci:{layout.path}:t1").stdout)
    assert info["Digest"] == layout.manifest.digest
    assert info["Layers"] == [layer.digest for layer in layout.layers]
    assert skopeo("inspect", "--raw", f"oci:{layout.path}:t1-index").stdout == layout.read_blob(layout.index.digest)  # type: ignore[union-attr]
    skopeo("copy", f"oci:{layout.path}:t1", f"dir:{tmp_path / 'out'}")
    manifest, blobs = check_dir_copy(str(tmp_path / "out"))
    assert manifest == layout.read_blob(layout.manifest.digest)
    assert blobs == {layout.config.digest, *(layer.digest for layer in layout.layers)}


def test_command_line(tmp_path: Any) -> None:
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    argv = [sys.executable, "-m", "kraken.cli.image", str(tmp_path / "cli"), "--tag", "v9", "--layers", "2"]
    argv += ["--random-layer-size", "512KiB", "--seed", "cli", "--index"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    expected = write_layout(
        str(tmp_path / "lib"), tag="v9", layers=2, random_layer_size=512 * 1024, seed="cli", index=True
    )
    assert printed["manifest"]["digest"] == expected.manifest.digest
    assert printed["index"]["digest"] == expected.index.digest  # type: ignore[union-attr]
    assert printed["index_tag"] == "v9-index"
    assert [layer["digest"] for layer in printed["layers"]] == [layer.digest for layer in expected.layers]

    bad = subprocess.run(
        [sys.executable, "-m", "kraken.cli.image", str(tmp_path / "bad"), "--random-layer-size", "lots"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "not a size" in bad.stderr and "Traceback" not in bad.stderr
