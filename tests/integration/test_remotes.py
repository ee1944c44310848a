"""Two clusters as real processes (an origin and a build-index each): a tag put in A whose repository
matches A's remote rule appears in B, every blob of its image on B's origin first; a blob B already
holds is not sent again; B, whose own rule points back at A, never sends it back (no loops)."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import urllib.request
from typing import Any

from ._replication import (
    Every,
    get_tag,
    image,
    origin_has,
    put_tag,
    running_daemons,  # noqa: F401  (the daemons fixture)
    upload_blob,
)
from .test_origin_cluster import Daemons, free_ports

REPO = "team/app"
FAST = {"retries": 1, "backoff": "100ms", "max_backoff": "100ms", "timeout": "10s"}
DONE = re.compile(r"replication of team/app:(\S+) to (\S+) -> \S+ done: (\d+) blobs sent, (\d+) there already")


def cluster(
    daemons: Daemons, tmp_path: Any, name: str, ports: list[int], other: dict[str, Any], *, origin: bool = True
) -> Any:
    """Cluster ``name``'s origin (unless ``origin`` is False: it runs already) and build-index, whose
    one remote (``other``: name, build_index, origins) takes ``team/.*``."""
    origin_port, p2p, bi_port = ports
    if origin:
        daemons.start(
            f"origin-{name}",
            "kraken-origin",
            {
                "listen_http": f"tcp:{origin_port}:interface=127.0.0.1",
                "store": {"root": str(tmp_path / f"origin-{name}")},
                "p2p": {"listen": f"tcp:{p2p}:interface=127.0.0.1"},
                "http_client": FAST,
            },
            "origin P2P listening",
        )
    return daemons.start(
        f"build-index-{name}",
        "kraken-build-index",
        {
            "listen_http": f"tcp:{bi_port}:interface=127.0.0.1",
            "origin": f"http://127.0.0.1:{origin_port}",
            "database": str(tmp_path / f"bi-{name}" / "tags.db"),
            "http_client": FAST,
            "remotes": [{"repositories": "team/.*", **other}],
            "replication": {"backoff_min": "200ms", "backoff_max": "1s"},
        },
        "build-index listening",
    )


def test_a_tag_and_its_blobs_cross_to_the_other_cluster_once(daemons: Daemons, tmp_path: Any) -> None:
    ports = free_ports(6)
    a_origin, b_origin = f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[3]}"
    a_index, b_index = f"http://127.0.0.1:{ports[2]}", f"http://127.0.0.1:{ports[5]}"
    a = cluster(daemons, tmp_path, "a", ports[:3], {"name": "b", "build_index": b_index, "origins": b_origin})
    b = cluster(daemons, tmp_path, "b", ports[3:], {"name": "a", "build_index": [a_index], "origins": [a_origin]})
    daemons.wait_ready()

    digest, blobs = image(a_origin, REPO, "one")
    upload_blob(b_origin, REPO, json.dumps({"seed": "one"}).encode())  # B already has the config
    assert put_tag(a_index, REPO, "v1", digest) == 201
    assert a.output.wait_for(lambda line: DONE.search(line) is not None)
    assert get_tag(b_index, REPO, "v1") == digest
    assert all(origin_has(b_origin, REPO, d) for d in blobs)
    [(tag, remote, sent, present)] = [m.groups() for line in a.output.snapshot() if (m := DONE.search(line))]
    assert (tag, remote, sent, present) == ("v1", "b", "2", "1")  # the layer and the manifest; not the config

    # B marked it as received from A and queued nothing back (its own rule matches team/.* too)
    assert any("(replicated from" in line for line in b.output.snapshot())
    with sqlite3.connect(str(tmp_path / "bi-b" / "tags.db")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM tag_outbox").fetchone() == (0,)
        assert conn.execute("SELECT repo, tag FROM tag_sources").fetchall() == [(REPO, "v1")]
    with urllib.request.urlopen(f"{b_index}/internal/replication", timeout=10) as r:
        doc = json.load(r)
    assert doc["pending"] == [] and doc["stats"]["replicated"] == 0 and doc["remotes"] == ["a"]
    with urllib.request.urlopen(f"{a_index}/internal/replication", timeout=10) as r:
        doc = json.load(r)
    assert doc["pending"] == [] and doc["stats"]["replicated"] == 1 and doc["stats"]["blobs_sent"] == 2
    for d in (a, b):
        assert not [line for line in d.output.snapshot() if re.search(r"Unhandled|Traceback", line)]


def test_a_queue_of_20_tags_survives_a_sigkill_of_the_senders_build_index(daemons: Daemons, tmp_path: Any) -> None:
    ports = free_ports(6)
    a_origin, b_origin = f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[3]}"
    a_index, b_index = f"http://127.0.0.1:{ports[2]}", f"http://127.0.0.1:{ports[5]}"
    to_b = {"name": "b", "build_index": b_index, "origins": b_origin}
    a = cluster(daemons, tmp_path, "a", ports[:3], to_b)
    daemons.wait_ready()
    tags = {f"t{i:02d}": image(a_origin, REPO, f"image {i}")[0] for i in range(20)}
    for tag, digest in tags.items():
        assert put_tag(a_index, REPO, tag, digest) == 201
    # cluster B is not running: every replication waits in A's database
    assert a.output.wait_for(lambda line: "replication of team/app:" in line and "failed" in line)
    a.stop(signal.SIGKILL)
    with sqlite3.connect(str(tmp_path / "bi-a" / "tags.db")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM tag_outbox WHERE kind = 'remote'").fetchone() == (20,)

    cluster(daemons, tmp_path, "b", ports[3:], {"name": "a", "build_index": a_index, "origins": a_origin})
    again = cluster(daemons, tmp_path, "a", ports[:3], to_b, origin=False)
    daemons.wait_ready()
    assert again.output.wait_for(Every(DONE, set(tags)))
    for tag, digest in tags.items():
        assert get_tag(b_index, REPO, tag) == digest
    sent = sum(int(m.group(3)) for line in again.output.snapshot() if (m := DONE.search(line)))
    assert sent == 20 * 3  # each image's config, layer and manifest crossed once
