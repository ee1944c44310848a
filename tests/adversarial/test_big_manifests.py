"""Manifests that list 10,000 unknown layers: refused with a clear OCI error before any lookup (over the limit),
or checked in a few batched questions (under a raised limit); a client that leaves stops the check; the proxy
keeps answering its health check and its memory stays bounded throughout."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable
from typing import Any

from _clients import push, random_blob, repo
from _fleet import Fleet, run_all
from _hostile import HealthWatch, big_manifest, put_manifest

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
    digest = random_blob(path, 512)
    assert push(f.proxy, name, path) == digest
    return digest, 512


def test_manifests_over_the_reference_limit_are_refused_before_any_lookup(
    fleet: Callable[..., Fleet], tmp_path: Any
) -> None:
    f = fleet(agents=0)
    name = repo()
    config, size = config_blob(f, name, tmp_path)
    bodies = [big_manifest(config, size, salt, LAYERS) for salt in range(MANIFESTS)]
    before, rss = origin_stats(f), f["proxy"].rss()
    watch = HealthWatch(f.proxy)
    try:
        answers = run_all([lambda b=b: put_manifest(f.proxy, name, b) for b in bodies])  # type: ignore[misc]
    finally:
        watch.stop()
    for status, doc in answers:
        assert status == 400
        (error,) = doc["errors"]
        assert error["code"] == "MANIFEST_INVALID"
        assert f"{LAYERS + 1}" in error["message"] and "1000" in error["message"]
    assert origin_stats(f) == before  # not one question to the origins
    assert watch.answers and not watch.failures
    assert f["proxy"].rss() - rss < MEMORY_RAIL


def test_manifests_under_a_raised_limit_are_checked_in_batches(fleet: Callable[..., Fleet], tmp_path: Any) -> None:
    f = fleet(agents=0, overrides={"proxy": {"registry": {"max_references": 20_000}}})
    name = repo()
    config, size = config_blob(f, name, tmp_path)
    bodies = [big_manifest(config, size, salt, LAYERS) for salt in range(MANIFESTS)]
    before, rss = origin_stats(f), f["proxy"].rss()
    watch = HealthWatch(f.proxy)
    try:
        answers = run_all([lambda b=b: put_manifest(f.proxy, name, b) for b in bodies])  # type: ignore[misc]
    finally:
        watch.stop()
    for status, doc in answers:
        assert status == 400
        assert {e["code"] for e in doc["errors"]} == {"MANIFEST_BLOB_UNKNOWN"}
    after = origin_stats(f)
    # The check stops at the first batch that finds unknown blobs: a few questions per manifest, not 10,000.
    assert 0 < after["stat_batches"] - before["stat_batches"] <= 3 * MANIFESTS
    assert after["blob_heads"] - before["blob_heads"] <= 100 * MANIFESTS
    assert watch.answers and not watch.failures
    assert f["proxy"].rss() - rss < MEMORY_RAIL


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
