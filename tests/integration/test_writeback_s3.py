"""Write-back to S3 (moto) from a herd whose origin has an ``s3`` backend, pushed to and pulled with skopeo.

Each test starts its own moto server (``tests/servers.py``) and its own herd, whose origin writes every
committed blob back to the bucket in docker/distribution's layout (``name_path: sharded_docker_blob``, no
root directory: keys ``docker/registry/v2/blobs/sha256/<xx>/<hex>/data``). The tests wait for the
origin's write-back log lines (``write-back of <digest>: uploaded``, ``... failed``), never for time.
moto keeps its state in memory: a moto started again on the same port needs its bucket again.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from servers import S3_ACCESS_KEY, S3_SECRET_KEY, MotoServer, start_moto

from kraken.cli.image import Layout, write_layout

from ._tools import check_dir_copy, skopeo

# A backstop for each wait on the herd's log; the waits end as soon as the lines are there.
WRITEBACK_TIMEOUT = 60.0

_DONE = re.compile(r"write-back of (sha256:[0-9a-f]{64}): (uploaded|already there)")
_FAILED = re.compile(r"write-back of (sha256:[0-9a-f]{64}) failed")


class S3:
    """This test's moto server and bucket; ``stop()`` it and ``start_again()`` on the same port."""

    def __init__(self) -> None:
        self.bucket = f"kraken-{uuid.uuid4().hex[:12]}"
        self._servers = [start_moto()]
        try:
            self.server.create_bucket(self.bucket)
        except BaseException:
            self.close()
            raise
        self.url = self.server.url

    @property
    def server(self) -> MotoServer:
        return self._servers[-1]

    def stop(self) -> None:
        self.server.stop()

    def start_again(self) -> None:
        """moto on the same port, with the bucket created again (moto forgets everything)."""
        assert not self.server.alive()
        self._servers.append(start_moto(self.server.port))
        self.server.create_bucket(self.bucket)

    def close(self) -> None:
        for server in self._servers:
            server.stop()

    def objects(self) -> dict[str, int]:
        return self.server.objects(self.bucket)

    def get(self, key: str) -> bytes:
        return self.server.get(self.bucket, key)


@pytest.fixture
def s3() -> Iterator[S3]:
    s3 = S3()
    try:
        yield s3
    finally:
        s3.close()


def s3_herd(s3: S3, *, outage: bool = False) -> dict[str, Any]:
    """Herd configuration: the origin writes everything back to the bucket and retries failures quickly.

    With ``outage`` the proxy does not retry the origin's 503s: while S3 is down, the origin answers a HEAD
    of a blob it lacks with 503 (its fetch on miss fails), and the proxy's default retries (about 2 s per
    HEAD) would only make the push slower, not different.
    """
    extra: dict[str, Any] = {"proxy": {"http_client": {"retries": 0}}} if outage else {}
    return extra | {
        "origin": {
            "backends": [
                {
                    "namespace": ".*",
                    "s3": {
                        "bucket": s3.bucket,
                        "endpoint": s3.url,
                        "access_key": S3_ACCESS_KEY,
                        "secret_key": S3_SECRET_KEY,
                        "name_path": "sharded_docker_blob",
                        "http_client": {"connect_timeout": "2s", "timeout": "10s", "retries": 0},
                    },
                }
            ],
            "writeback": {"backoff_min": "0.2s", "backoff_max": "1s"},
        }
    }


def blob_key(digest: str) -> str:
    hex_ = digest.removeprefix("sha256:")
    return f"docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data"


def image_digests(layout: Layout) -> set[str]:
    return {layout.manifest.digest, layout.config.digest, *(layer.digest for layer in layout.layers)}


def small_image(tmp_path: Any, name: str) -> Layout:
    return write_layout(str(tmp_path / name), layers=2, random_layer_size="1MiB", seed=f"{name}-{uuid.uuid4()}")


def push(layout: Layout, ref: str) -> None:
    skopeo("copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{layout.path}:{layout.tag}", ref)


def pull_and_check(ref: str, target: str, layout: Layout) -> None:
    """skopeo copies ``ref`` to ``dir:target``; every blob hashes to its name and they are the image's."""
    skopeo("copy", "--src-tls-verify=false", ref, f"dir:{target}")
    manifest, blobs = check_dir_copy(target)
    assert manifest == layout.read_blob(layout.manifest.digest)
    assert blobs == {layout.config.digest, *(layer.digest for layer in layout.layers)}


def every_digest(pattern: re.Pattern[str], digests: set[str]) -> Callable[[str], bool]:
    """A line consumer for ``Herd.wait_for_lines``: True once ``pattern`` has matched a line for each digest."""
    waiting = set(digests)

    def done(line: str) -> bool:
        match = pattern.search(line)
        if match is not None:
            waiting.discard(match.group(1))
        return not waiting

    return done


def wait_for_writebacks(herd: Any, digests: set[str], start: int = 0) -> None:
    if not herd.wait_for_lines(every_digest(_DONE, digests), start, WRITEBACK_TIMEOUT):
        uploaded = {m.group(1) for line in herd.log_lines(start) if (m := _DONE.search(line))}
        pytest.fail(f"not written back (herd log {herd.log_path}): {sorted(digests - uploaded)}")


def wait_for_failures(herd: Any, digests: set[str], start: int = 0) -> None:
    if not herd.wait_for_lines(every_digest(_FAILED, digests), start, WRITEBACK_TIMEOUT):
        failed = {m.group(1) for line in herd.log_lines(start) if (m := _FAILED.search(line))}
        pytest.fail(f"no failed write-back logged (herd log {herd.log_path}) for {sorted(digests - failed)}")


def assert_in_bucket(s3: S3, layout: Layout) -> None:
    """Every blob of the image is in the bucket at distribution's key, with its bytes."""
    objects = s3.objects()
    for digest in image_digests(layout):
        key = blob_key(digest)
        assert key in objects, f"{key} not in the bucket; it holds {sorted(objects)}"
        assert s3.get(key) == layout.read_blob(digest), f"{key} differs from {digest}"


def test_a_push_is_written_back_to_s3(herd_launcher: Any, s3: S3, tmp_path: Any) -> None:
    layout = small_image(tmp_path, "image")
    herd = herd_launcher.start(str(tmp_path / "herd"), agents=1, extra=s3_herd(s3))

    start = herd.output.count()
    push(layout, f"docker://{herd.registry}/writeback/s3:v1")
    wait_for_writebacks(herd, image_digests(layout), start)

    assert_in_bucket(s3, layout)
    # Nothing but the image's blobs, all under distribution's blob tree.
    assert set(s3.objects()) == {blob_key(d) for d in image_digests(layout)}


def test_a_push_while_s3_is_down_is_written_back_when_it_returns(herd_launcher: Any, s3: S3, tmp_path: Any) -> None:
    layout = small_image(tmp_path, "image")
    herd = herd_launcher.start(str(tmp_path / "herd"), agents=1, extra=s3_herd(s3, outage=True))
    ref = f"docker://{herd.registry}/writeback/outage:v1"

    s3.stop()
    start = herd.output.count()
    push(layout, ref)  # skopeo exits 0 (or the helper fails the test)
    pull_and_check(ref, str(tmp_path / "pulled"), layout)
    wait_for_failures(herd, image_digests(layout), start)  # the origin tried, and S3 was not there

    s3.start_again()
    wait_for_writebacks(herd, image_digests(layout), start)
    assert_in_bucket(s3, layout)


def test_pending_write_backs_survive_an_origin_restart(herd_launcher: Any, s3: S3, tmp_path: Any) -> None:
    layout = small_image(tmp_path, "image")
    herd = herd_launcher.start(str(tmp_path / "herd"), agents=1, extra=s3_herd(s3, outage=True))

    s3.stop()
    start = herd.output.count()
    push(layout, f"docker://{herd.registry}/writeback/restart:v1")
    wait_for_failures(herd, image_digests(layout), start)
    assert herd_launcher.stop(herd) in (0, -15)
    assert not any(_DONE.search(line) for line in herd.log_lines(start)), "written back while S3 was down?"

    s3.start_again()
    again = herd_launcher.restart(herd)  # same ports, same state_dir, same configuration
    wait_for_writebacks(again, image_digests(layout))
    assert_in_bucket(s3, layout)


def test_an_origin_with_an_empty_disk_fetches_from_s3(herd_launcher: Any, s3: S3, tmp_path: Any) -> None:
    layout = small_image(tmp_path, "image")
    herd = herd_launcher.start(str(tmp_path / "herd"), agents=1, extra=s3_herd(s3))
    repo = "writeback/empty-disk"

    start = herd.output.count()
    push(layout, f"docker://{herd.registry}/{repo}:v1")
    wait_for_writebacks(herd, image_digests(layout), start)
    assert herd_launcher.stop(herd) in (0, -15)

    cache = os.path.join(herd.state_dir, "origin", "cache")
    assert os.path.isdir(cache), f"the origin's cache is not where the test expects it: {cache}"
    shutil.rmtree(cache)

    again = herd_launcher.restart(herd)
    pull_and_check(f"docker://{again.agent_registry(0)}/{repo}:v1", str(tmp_path / "from-agent"), layout)
    pull_and_check(f"docker://{again.registry}/{repo}:v1", str(tmp_path / "from-proxy"), layout)
    # The origin's cache was filled again, from S3.
    for digest in image_digests(layout):
        hex_ = digest.removeprefix("sha256:")
        data = os.path.join(cache, hex_[:2], hex_[2:4], hex_, "data")
        with open(data, "rb") as f:
            assert f.read() == layout.read_blob(digest), f"{data} differs from {digest}"
