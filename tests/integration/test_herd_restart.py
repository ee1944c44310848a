"""What the herd stored survives a restart on the same state directory."""

from __future__ import annotations

import json
import uuid
from typing import Any

from kraken.cli.image import write_layout

from ._tools import check_dir_copy, skopeo, skopeo_inspect_raw


def test_images_and_tags_survive_a_restart(herd_launcher: Any, tmp_path: Any) -> None:
    layout = write_layout(str(tmp_path / "layout"), layers=2, random_layer_size="2MiB", seed=f"restart-{uuid.uuid4()}")
    base = str(tmp_path / "herd")
    first = herd_launcher.start(base)
    ref = f"docker://{first.registry}/integration/restart:v1"
    skopeo("copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{layout.path}:v1", ref)
    ports = first.ports
    assert herd_launcher.stop(first) in (0, -15)

    second = herd_launcher.start(base, ports)
    assert second.registry == first.registry
    assert skopeo_inspect_raw(ref) == layout.read_blob(layout.manifest.digest)
    tags = json.loads(
        skopeo("list-tags", "--tls-verify=false", f"docker://{second.registry}/integration/restart").stdout
    )
    assert tags["Tags"] == ["v1"]
    skopeo("copy", "--src-tls-verify=false", ref, f"dir:{tmp_path / 'pulled'}")
    manifest, blobs = check_dir_copy(str(tmp_path / "pulled"))
    assert manifest == layout.read_blob(layout.manifest.digest)
    assert blobs == {layout.config.digest, *(layer.digest for layer in layout.layers)}
