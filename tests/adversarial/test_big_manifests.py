"""Manifests that list 10,000 unknown layers: refused with a clear OCI error before any lookup (over the limit),
or checked in a few batched questions (under a raised limit); a client that leaves stops the check; the proxy
keeps answering its health check and its memory stays bounded throughout."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from _clients import push, repo
from _daemons import write_blob
from _fleet import Fleet
from _hostile import big_manifest, flood_manifests, put_manifest

LAYERS = 10_000
MANIFESTS = 8
MEMORY_RAIL = 100 << 20  # bytes of proxy RSS growth; the defect took 270-680 MB, the figure is in bench/RESULTS.md
TIMEOUT = 120.0  # seconds; a safety rail


def origin_stats(f: Fleet) -> dict[str, int]:
    totals: dict[str, int] = {}
    for url in f.origin_urls:
        conn = http.client.HTTPConnection(url.removeprefix("http://").split(":")[0], int(url.rsplit(":", 1)[1]))
        conn.request("GET", "/stats")
        stats = json.loads(conn.getresponse().read())
        conn.close()
        for key in ("stat_batches", "stat_batch_digests", "blob_heads"):
            totals[key] = totals.get(key, 0) + int(stats[key])
    return totals


def config_blob(f: Fleet, name: str, tmp_path: Any) -> tuple[str, int]:
    path = str(tmp_path / "config")
    digest = write_blob(path, 512)
    assert push(f.proxy, name, path) == digest
    return digest, 512


@pytest.mark.parametrize("limit", [None, 20_000], ids=["over-the-limit", "under-a-raised-limit"])
def test_manifests_of_10000_made_up_layers(fleet: Callable[..., Fleet], tmp_path: Any, limit: int | None) -> None:
    """Over the default limit (1000 references), each is refused before any lookup; under a raised one, it is
    checked in a few batched questions and refused for its unknown blobs. Either way the proxy's health
    check keeps answering and its memory stays bounded."""
    f = fleet(agents=0, overrides={"proxy": {"registry": {"max_references": limit}}} if limit else None)
    name = repo()
    config, size = config_blob(f, name, tmp_path)
    before = origin_stats(f)
    flood = flood_manifests(f, name, config, size, count=MANIFESTS, layers=LAYERS)
    after = origin_stats(f)
    for status, doc in flood.answers:
        assert status == 400
        codes = [e["code"] for e in doc["errors"]]
        if limit is None:
            assert codes == ["MANIFEST_INVALID"]
            assert f"{LAYERS + 1}" in doc["errors"][0]["message"] and "1000" in doc["errors"][0]["message"]
        else:
            assert set(codes) == {"MANIFEST_BLOB_UNKNOWN"}
    if limit is None:
        assert after == before  # not one question to the origins
    else:
        # The check stops at the first batch that finds unknown blobs: a few questions each, not 10,000.
        assert 0 < after["stat_batches"] - before["stat_batches"] <= 3 * MANIFESTS
        assert after["blob_heads"] - before["blob_heads"] <= 100 * MANIFESTS
    assert flood.health_answers and not flood.health_failures
    assert flood.rss_growth < MEMORY_RAIL


def test_a_client_that_leaves_stops_the_check(fleet: Callable[..., Fleet], tmp_path: Any) -> None:
    f = fleet(agents=0, overrides={"proxy": {"registry": {"max_references": 20_000}}})
    name = repo()
    config, size = config_blob(f, name, tmp_path)
    body = big_manifest(config, size, 0, LAYERS)
    proxy = f["proxy"]
    mark = proxy.mark()
    origins = [f"origin-{i}" for i in range(len(f.members))]
    for origin in origins:
        f.pause(origin)  # the check's first question now waits for an answer that cannot come
    try:
        host, port = f.proxy.split(":")
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
            head = (
                f"PUT /v2/{name}/manifests/t HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
                "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n\r\n"
            )
            s.sendall(head.encode() + body)
            proxy.wait_for(r"checking its \d+ references", TIMEOUT, mark)
        proxy.wait_for(r"reference check stopped, the client went away", TIMEOUT, mark)
    finally:
        for origin in origins:
            f.resume(origin)
    status, _ = put_manifest(f.proxy, name, big_manifest(config, size, 1, LAYERS))  # the proxy serves on
    assert status == 400
    assert not [x for x in proxy.since(mark) if "Request.finish called" in x]
