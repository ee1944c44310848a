"""Two whole clusters on one machine (two kraken-herds on their own ports): skopeo pushes an image with
an OCI index and a 64 MiB layer to cluster A's proxy; A's build-index replicates the tag to cluster B;
an agent of B pulls it by tag with every digest equal, and each blob crossed to B's origin once."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from typing import Any

from kraken.cli.image import write_layout

from ._tools import check_oci_copy, oci_index_entries, skopeo, skopeo_inspect_raw

COMMITTED = re.compile(r"blob (sha256:[0-9a-f]{64}) committed")
RETRY = {"backoff_min": "200ms", "backoff_max": "1s"}


def test_an_image_pushed_to_a_is_pulled_by_tag_from_an_agent_of_b(herd_launcher: Any, tmp_path: Any) -> None:
    layout = write_layout(
        str(tmp_path / "layout"), layers=1, random_layer_size="64MiB", seed=f"remotes-{uuid.uuid4()}", index=True
    )
    assert layout.index is not None
    b = herd_launcher.start(str(tmp_path / "b"), herd_launcher.free_ports(1), agents=1)
    remote = {"name": "b", "repositories": "remotes/.*", "build_index": b.build_index_url, "origins": b.origin_url}
    extra = {"build_index": {"remotes": [remote], "replication": RETRY}}
    a = herd_launcher.start(str(tmp_path / "a"), herd_launcher.free_ports(1), agents=1, extra=extra)
    b_start = b.output.count()

    repo = f"remotes/app-{uuid.uuid4().hex[:8]}"
    skopeo(
        "copy", "--all", "--dest-tls-verify=false", "--preserve-digests",
        f"oci:{layout.path}:v1-index", f"docker://{a.registry}/{repo}:v1",
    )  # fmt: skip
    done = re.compile(rf"replication of {re.escape(repo)}:v1 to b -> {layout.index.digest} done: (\d+) blobs sent")
    assert a.wait_for_lines(lambda line: done.search(line) is not None, timeout=300)

    # an agent of B: the index by tag, byte for byte, then everything under it
    agent = f"docker://{b.agent_registry(0)}/{repo}:v1"
    assert skopeo_inspect_raw(agent) == layout.read_blob(layout.index.digest)
    skopeo("copy", "--all", "--src-tls-verify=false", "--preserve-digests", agent, f"oci:{tmp_path / 'pulled'}:v1")
    found = check_oci_copy(str(tmp_path / "pulled"))
    under = (*layout.platform_manifests, *layout.platform_configs, *layout.layers)
    expected = {layout.index.digest, *(blob.digest for blob in under)}
    assert set(found) == expected
    [entry] = oci_index_entries(str(tmp_path / "pulled"))
    assert entry["digest"] == layout.index.digest

    # the blobs crossed once: B's origin committed each of them exactly once, and nothing else
    received = Counter(m.group(1) for line in b.log_lines(b_start) if (m := COMMITTED.search(line)))
    assert set(received) == expected and set(received.values()) == {1}
    [sent] = [int(m.group(1)) for line in a.log_lines() if (m := done.search(line))]
    assert sent == len(expected)
