"""skopeo against the herd: push an OCI layout, pull it back, and compare every digest.

skopeo is a real client (containers/image, as podman and CRI-O use). These
tests are synchronous: skopeo and the herd are separate processes, so
blocking this thread on ``subprocess.run`` is fine. The round trips of an
image and of an index run twice (``target``): against the plain herd, and
against ``kraken-herd --secure`` (TLS with the herd's CA, Basic auth).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import uuid
from typing import Any

import requests

from kraken.cli.image import MEDIA_TYPE_LAYER, Layout, write_layout

from ._tools import (
    Target,
    check_dir_copy,
    check_oci_copy,
    oci_index_entries,
    sha256_bytes,
    skopeo,
    skopeo_inspect,
    skopeo_inspect_raw,
)


def unique(name: str) -> str:
    return f"integration/{name}-{uuid.uuid4().hex[:8]}"


def test_push_with_preserved_digests_and_pull_back(big_image: Layout, target: Target, tmp_path: Any) -> None:
    repo = unique("skopeo")
    manifest = big_image.read_blob(big_image.manifest.digest)
    skopeo(
        "copy", *target.proxy.flags("dest"), "--preserve-digests",
        f"oci:{big_image.path}:v1", target.ref(repo, "v1"),
    )  # fmt: skip

    raw = skopeo_inspect_raw(target.ref(repo, "v1"), target.proxy)
    assert raw == manifest, "the registry changed the manifest bytes"
    assert sha256_bytes(raw) == big_image.manifest.digest

    info = skopeo_inspect(target.ref(repo, "v1"), target.proxy)
    assert info["Digest"] == big_image.manifest.digest
    assert info["Layers"] == [layer.digest for layer in big_image.layers]
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    assert "v1" in info["RepoTags"]

    # Back to dir: every blob file is named by its sha256 and they are exactly ours.
    skopeo("copy", *target.proxy.flags("src"), target.ref(repo, "v1"), f"dir:{tmp_path / 'dir'}")
    pulled_manifest, blobs = check_dir_copy(str(tmp_path / "dir"))
    assert pulled_manifest == manifest
    assert blobs == {big_image.config.digest, *(layer.digest for layer in big_image.layers)}
    big_file = tmp_path / "dir" / big_image.layers[0].digest.split(":")[1]
    assert big_file.stat().st_size == big_image.layers[0].size

    # And to an OCI layout (which would gzip the layers without --preserve-digests).
    skopeo(
        "copy", *target.proxy.flags("src"), "--preserve-digests", target.ref(repo, "v1"), f"oci:{tmp_path / 'oci'}:v1"
    )  # fmt: skip
    found = check_oci_copy(str(tmp_path / "oci"))
    assert set(found) == {big_image.manifest.digest, big_image.config.digest, *(b.digest for b in big_image.layers)}
    assert found[big_image.manifest.digest] == manifest
    assert found[big_image.config.digest] == big_image.read_blob(big_image.config.digest)
    [entry] = oci_index_entries(str(tmp_path / "oci"))
    assert entry["digest"] == big_image.manifest.digest


def test_copy_all_of_an_index_and_list_tags(big_image: Layout, target: Target, tmp_path: Any) -> None:
    assert big_image.index is not None and big_image.index_tag == "v1-index"
    repo = unique("skopeo-index")
    skopeo(
        "copy", "--all", *target.proxy.flags("dest"), "--preserve-digests",
        f"oci:{big_image.path}:v1-index", target.ref(repo, "v1-index"),
    )  # fmt: skip
    index = big_image.read_blob(big_image.index.digest)
    raw = skopeo_inspect_raw(target.ref(repo, "v1-index"), target.proxy)
    assert raw == index
    assert sha256_bytes(raw) == big_image.index.digest
    for platform_manifest in big_image.platform_manifests:
        assert skopeo_inspect_raw(target.ref(repo, platform_manifest.digest), target.proxy) == big_image.read_blob(
            platform_manifest.digest
        )
    arm = json.loads(
        skopeo("inspect", *target.proxy.flags(), "--override-arch=arm64", target.ref(repo, "v1-index")).stdout
    )
    assert arm["Architecture"] == "arm64"
    assert arm["Layers"] == [layer.digest for layer in big_image.layers]

    # Everything comes back with --all.
    skopeo(
        "copy", "--all", *target.proxy.flags("src"), "--preserve-digests",
        target.ref(repo, "v1-index"), f"oci:{tmp_path / 'all'}:x",
    )  # fmt: skip
    found = check_oci_copy(str(tmp_path / "all"))
    expected = {
        big_image.index.digest,
        *(m.digest for m in big_image.platform_manifests),
        *(c.digest for c in big_image.platform_configs),
        *(layer.digest for layer in big_image.layers),
    }
    assert set(found) == expected
    [entry] = oci_index_entries(str(tmp_path / "all"))
    assert entry["digest"] == big_image.index.digest

    # Tags, as skopeo lists them.
    listed = json.loads(skopeo("list-tags", *target.proxy.flags(), target.ref(repo)).stdout)
    assert listed["Tags"] == ["v1-index"]
    skopeo(
        "copy", *target.proxy.flags("dest"), "--preserve-digests",
        f"oci:{big_image.path}:v1", target.ref(repo, "v1"),
    )  # fmt: skip
    listed = json.loads(skopeo("list-tags", *target.proxy.flags(), target.ref(repo)).stdout)
    assert listed["Tags"] == ["v1", "v1-index"]
    assert listed["Repository"].endswith(repo)


def gunzip_sha256(path: str) -> str:
    h = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def test_push_with_compression_and_pull_back(registry_ref: Any, tmp_path: Any) -> None:
    """Without --preserve-digests skopeo gzips the layers: new layer and manifest digests, same content.

    The layout is new to the registry: skopeo would reuse blobs it knows the registry has instead of compressing.
    """
    big_image = write_layout(str(tmp_path / "layout"), layers=3, random_layer_size="16MiB", seed=f"gzip-{uuid.uuid4()}")
    repo = unique("skopeo-gzip")
    skopeo("copy", "--dest-tls-verify=false", f"oci:{big_image.path}:v1", registry_ref(repo, "v1"))

    raw = skopeo_inspect_raw(registry_ref(repo, "v1"))
    doc = json.loads(raw)
    assert sha256_bytes(raw) != big_image.manifest.digest
    assert doc["config"]["digest"] == big_image.config.digest
    assert [layer["mediaType"] for layer in doc["layers"]] == ["application/vnd.oci.image.layer.v1.tar+gzip"] * 3
    assert skopeo_inspect(registry_ref(repo, "v1"))["Digest"] == sha256_bytes(raw)

    skopeo("copy", "--src-tls-verify=false", registry_ref(repo, "v1"), f"dir:{tmp_path / 'dir'}")
    pulled_manifest, blobs = check_dir_copy(str(tmp_path / "dir"))
    assert pulled_manifest == raw
    assert blobs == {doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])}
    for layer, diff_id in zip(doc["layers"], big_image.diff_ids, strict=True):
        path = os.path.join(tmp_path / "dir", layer["digest"].split(":")[1])
        assert os.path.getsize(path) == layer["size"]
        assert gunzip_sha256(path) == diff_id, "a gzipped layer does not unpack to the pushed tar"


def test_docker_schema2_push_and_pull(registry_ref: Any, tmp_path: Any) -> None:
    layout = write_layout(str(tmp_path / "small"), layers=2, random_layer_size="256KiB", seed="skopeo-v2s2")
    assert layout.layers[0].media_type == MEDIA_TYPE_LAYER
    repo = unique("skopeo-v2s2")
    skopeo("copy", "--dest-tls-verify=false", "--format", "v2s2", f"oci:{layout.path}:v1", registry_ref(repo, "v2s2"))
    raw = skopeo_inspect_raw(registry_ref(repo, "v2s2"))
    doc = json.loads(raw)
    assert doc["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert doc["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    skopeo("copy", "--src-tls-verify=false", registry_ref(repo, "v2s2"), f"dir:{tmp_path / 'dir'}")
    pulled_manifest, blobs = check_dir_copy(str(tmp_path / "dir"))
    assert pulled_manifest == raw
    assert blobs == {doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])}
    assert skopeo_inspect(registry_ref(repo, "v2s2"))["Digest"] == sha256_bytes(raw)


def test_a_large_layer_reaches_the_origin_while_it_is_pushed(herd: Any, tmp_path: Any) -> None:
    """The proxy streams each large body to an origin as it arrives (``kraken.proxy.stage``): at the PUT the
    origin stores what it already has, and the proxy sends nothing again."""
    layout = write_layout(str(tmp_path / "layout"), layers=2, random_layer_size="3MiB", seed=uuid.uuid4().hex)
    big = [layer.digest for layer in layout.layers if layer.size >= 3 << 20]
    assert big
    target = Target("plain", herd)
    repo = unique("streamed")
    start = herd.output.count()
    skopeo(
        "copy", *target.proxy.flags("dest"), "--preserve-digests", f"oci:{layout.path}:v1", target.ref(repo, "v1")
    )  # fmt: skip
    lines = herd.log_lines(start)
    for digest in big:
        assert any(f"blob {digest}" in line and "stored as it was streamed" in line for line in lines), digest
        assert not any(f"blob {digest}" in line and "handed to the origin" in line for line in lines), digest
    assert not any("Traceback" in line for line in lines)
    metrics = requests.get(f"http://{herd.registry}/metrics", timeout=30).text
    series = 'kraken_proxy_upload_streams_total{outcome="stored"}'
    [stored] = [line for line in metrics.splitlines() if line.startswith(series)]
    assert float(stored.split()[-1]) >= len(big)

    skopeo("copy", *target.proxy.flags("src"), target.ref(repo, "v1"), f"dir:{tmp_path / 'dir'}")
    for digest in big:
        assert sha256_bytes((tmp_path / "dir" / digest.split(":")[1]).read_bytes()) == digest
