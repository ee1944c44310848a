"""sha512 blob names in the backends: docker/distribution's per-algorithm directory, and back."""

from __future__ import annotations

import hashlib

import pytest

from kraken.backends import InvalidName, ShardedDockerBlobPather
from kraken.backends.http import HTTPBackendConfig
from kraken.backends.names import blob_digest

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
