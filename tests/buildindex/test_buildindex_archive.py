"""Tag archive built from ``backends:`` entries: the docker_tag layout on a
real filesystem backend (unit, inline worker) and on a real moto S3 server
(real reactor)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from buildindex_fakes import result_of
from servers import S3_ACCESS_KEY, S3_SECRET_KEY, MotoServer, running_moto
from twisted.internet.task import Clock

from kraken.backends.config import BackendConfig, FSBackendConfig
from kraken.backends.registry import RegistryConfig
from kraken.backends.s3 import S3Config
from kraken.buildindex.archive import TEMP_PREFIX, build_tag_archive, sweep_scratch
from kraken.core import Digest
from kraken.net import HTTPClientConfig
from kraken.workers import InlineWorker, ThreadWorker

D1 = Digest.from_bytes(b"one")
D2 = Digest.from_bytes(b"two")
LINK = "docker/registry/v2/repositories/team/app/_manifests/tags/v1/current/link"


@pytest.fixture
def scratch(tmp_path: Any) -> str:
    path = tmp_path / "scratch"
    path.mkdir()
    return str(path)


@pytest.mark.parametrize("name_path", ["docker_tag", "identity", "sharded_docker_blob"])
def test_fs_tags_use_the_docker_tag_layout_whatever_name_path_says(tmp_path: Any, scratch: str, name_path: str) -> None:
    root = tmp_path / "registry"
    entry = BackendConfig(namespace=".*", fs=FSBackendConfig(root=str(root), name_path=name_path))
    archive = build_tag_archive([entry], worker=InlineWorker(), clock=Clock(), scratch=scratch)
    assert archive.writable("team/app")
    backend = archive.for_repo("team/app")
    assert backend is not None
    assert result_of(archive.get("team/app", "v1")) is None
    result_of(backend.put("team/app", "v1", D1))
    # exactly what docker/distribution's filesystem driver keeps: the digest text, no newline
    assert (root / LINK).read_bytes() == str(D1).encode()
    assert result_of(archive.get("team/app", "v1")) == D1
    (root / LINK).write_bytes(str(D2).encode() + b"\n")  # written by a registry (or by hand)
    assert result_of(archive.get("team/app", "v1")) == D2
    assert os.listdir(scratch) == []  # link files in transit are removed


def test_first_matching_namespace_wins_and_kinds_decide_what_is_possible(tmp_path: Any, scratch: str) -> None:
    entries = [
        BackendConfig(namespace="library/.*", registry=RegistryConfig(address="registry.example:5000")),
        BackendConfig(namespace=".*", fs=FSBackendConfig(root=str(tmp_path / "fs"), name_path="docker_tag")),
    ]
    archive = build_tag_archive(entries, worker=InlineWorker(), clock=Clock(), scratch=scratch, http=object())  # type: ignore[arg-type]
    library, other = archive.for_repo("library/ubuntu"), archive.for_repo("team/app")
    assert library is not None and other is not None
    assert (library.kind, library.readable, library.writable) == ("registry", True, False)
    assert (other.kind, other.writable) == ("fs", True)
    assert not archive.writable("library/ubuntu")
    with pytest.raises(ValueError, match="does not store tags"):
        result_of(library.put("library/ubuntu", "v1", D1))


def test_sweep_removes_leftover_link_files(scratch: str) -> None:
    for name in (f"{TEMP_PREFIX}a", f"{TEMP_PREFIX}b", "keep"):
        with open(os.path.join(scratch, name), "w") as f:
            f.write("x")
    assert sweep_scratch(scratch) == 2
    assert os.listdir(scratch) == ["keep"]


# -- real S3 (moto) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with running_moto() as server:
        yield server


@pytest_twisted.ensureDeferred
async def test_s3_tags_round_trip_in_the_docker_tag_layout(
    reactor: Any, http: Any, moto: MotoServer, scratch: str
) -> None:
    bucket = f"tags-{uuid.uuid4().hex[:12]}"
    moto.create_bucket(bucket)
    # name_path left at the S3 default (identity): tags still go to the docker_tag layout
    entry = BackendConfig(
        namespace=".*",
        s3=S3Config(
            bucket=bucket,
            endpoint=moto.url,
            root_directory="kraken",
            access_key=S3_ACCESS_KEY,
            secret_key=S3_SECRET_KEY,
            http_client=HTTPClientConfig(timeout=30.0, retries=0),
        ),
    )
    worker = ThreadWorker(reactor, reactor.getThreadPool())
    archive = build_tag_archive([entry], worker=worker, clock=reactor, scratch=scratch, http=http)
    backend = archive.for_repo("team/app")
    assert backend is not None
    assert await archive.get("team/app", "v1") is None
    await backend.put("team/app", "v1", D1)
    assert moto.objects(bucket) == {f"kraken/{LINK}": len(str(D1))}
    assert moto.get(bucket, f"kraken/{LINK}") == str(D1).encode()
    assert await archive.get("team/app", "v1") == D1
    assert os.listdir(scratch) == []
