"""sha512 blob names in the backends: docker/distribution's per-algorithm directory, and back."""

from __future__ import annotations

import hashlib

import pytest
from results import result_of

from kraken.backends import BlobNotFound, FSBackend, InvalidName, ShardedDockerBlobPather
from kraken.backends.http import HTTPBackendConfig
from kraken.backends.names import blob_digest
from kraken.workers import InlineWorker

HEX = hashlib.sha512(b"kraken").hexdigest()


def test_a_sha512_blob_lives_in_the_sha512_directory_and_maps_back_to_its_hex():
    pather = ShardedDockerBlobPather("r")
    path = f"r/docker/registry/v2/blobs/sha512/{HEX[:2]}/{HEX}/data"
    assert pather.path(f"sha512:{HEX}") == pather.path(HEX) == path
    assert pather.name(path) == HEX
    assert blob_digest(pather.name(path)).algorithm == "sha512"


WRONG_LENGTHS = [
    f"r/docker/registry/v2/blobs/sha256/{HEX[:2]}/{HEX}/data",
    f"r/docker/registry/v2/blobs/sha512/{HEX[:2]}/{HEX[:64]}/data",
]


@pytest.mark.parametrize("path", WRONG_LENGTHS)
def test_an_algorithm_directory_holds_only_its_own_length(path):
    with pytest.raises(InvalidName):
        ShardedDockerBlobPather("r").name(path)


def test_the_http_backend_fills_in_the_digest_with_its_algorithm():
    config = HTTPBackendConfig(download_url="https://blobs.example/{digest}/{hex}")
    assert config.url(HEX) == f"https://blobs.example/sha512:{HEX}/{HEX}"


def test_an_fs_backend_keeps_a_sha512_blob_where_docker_distribution_would(tmp_path):
    backend = FSBackend(str(tmp_path / "store"), ShardedDockerBlobPather(), worker=InlineWorker())
    source = tmp_path / "source"
    source.write_bytes(b"kraken")
    result_of(backend.upload("ns", HEX, str(source)))
    stored = tmp_path / "store" / "docker" / "registry" / "v2" / "blobs" / "sha512" / HEX[:2] / HEX / "data"
    assert stored.read_bytes() == b"kraken"
    assert result_of(backend.stat("ns", f"sha512:{HEX}")).size == 6
    result_of(backend.download("ns", HEX, str(tmp_path / "back")))
    assert (tmp_path / "back").read_bytes() == b"kraken"
    with pytest.raises(BlobNotFound):
        result_of(backend.stat("ns", hashlib.sha256(b"kraken").hexdigest()))  # the other algorithm: another blob
