"""Name pathers: docker/distribution's exact paths, and back from paths to names."""

from __future__ import annotations

import pytest

from kraken.backends import DockerTagPather, IdentityPather, InvalidName, ShardedDockerBlobPather, make_pather

HEX = "96443a84ce518ac22acb2e985eda402b58ac19ce6f91980bde63726a79d80b36"


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("", f"docker/registry/v2/blobs/sha256/96/{HEX}/data"),
        ("/", f"docker/registry/v2/blobs/sha256/96/{HEX}/data"),
        ("kraken", f"kraken/docker/registry/v2/blobs/sha256/96/{HEX}/data"),
        ("kraken/", f"kraken/docker/registry/v2/blobs/sha256/96/{HEX}/data"),
        ("/var/lib/registry", f"/var/lib/registry/docker/registry/v2/blobs/sha256/96/{HEX}/data"),
    ],
)
def test_sharded_docker_blob_paths(root, expected):
    pather = ShardedDockerBlobPather(root)
    assert pather.path(f"sha256:{HEX}") == expected
    assert pather.path(HEX) == expected
    assert pather.name(expected) == HEX


@pytest.mark.parametrize(
    "name", ["", "sha256:", "ab", HEX.upper(), HEX[:-1], HEX + "0", f"sha512:{HEX}", f"sha256:sha256:{HEX}", "../x"]
)
def test_sharded_docker_blob_rejects_non_digests(name):
    with pytest.raises(InvalidName):
        ShardedDockerBlobPather().path(name)


@pytest.mark.parametrize(
    "path",
    [
        f"docker/registry/v2/blobs/sha256/97/{HEX}/data",  # wrong shard
        f"docker/registry/v2/blobs/sha256/96/{HEX}/data/x",
        f"docker/registry/v2/blobs/sha256/96/{HEX}",
        f"docker/registry/v2/blobs/sha512/96/{HEX}/data",
        f"docker/registry/v2/blobs/sha256/96/{HEX[:-1]}/data",
        f"other/docker/registry/v2/blobs/sha256/96/{HEX}/data",
        f"docker/registry/v2/repositories/x/_layers/sha256/{HEX}/link",
    ],
)
def test_sharded_docker_blob_inverse_rejects_other_paths(path):
    with pytest.raises(InvalidName):
        ShardedDockerBlobPather().name(path)


def test_sharded_docker_blob_list_prefixes():
    pather = ShardedDockerBlobPather("r")
    assert pather.base() == "r/docker/registry/v2/blobs"
    assert pather.list_prefix("") == "r/docker/registry/v2/blobs/sha256/"
    assert pather.list_prefix("9") == "r/docker/registry/v2/blobs/sha256/9"
    assert pather.list_prefix("96") == "r/docker/registry/v2/blobs/sha256/96/96"
    assert pather.list_prefix("964") == "r/docker/registry/v2/blobs/sha256/96/964"
    assert pather.path(HEX).startswith(pather.list_prefix(HEX[:5]))
    for bad in ("sha256:96", "../", "G", HEX + "0"):
        with pytest.raises(InvalidName):
            pather.list_prefix(bad)


@pytest.mark.parametrize(
    ("root", "name", "expected"),
    [
        ("", "busybox:latest", "docker/registry/v2/repositories/busybox/_manifests/tags/latest/current/link"),
        (
            "",
            "library/ubuntu:22.04",
            "docker/registry/v2/repositories/library/ubuntu/_manifests/tags/22.04/current/link",
        ),
        ("tags", "a/b/c:v1", "tags/docker/registry/v2/repositories/a/b/c/_manifests/tags/v1/current/link"),
    ],
)
def test_docker_tag_paths(root, name, expected):
    pather = DockerTagPather(root)
    assert pather.path(name) == expected
    assert pather.name(expected) == name


@pytest.mark.parametrize(
    "name", ["busybox", "busybox:", ":latest", "a:b:c", "localhost:5000/x:y", "../x:y", "a//b:c", "a:..", "a:."]
)
def test_docker_tag_rejects_bad_names(name):
    with pytest.raises(InvalidName):
        DockerTagPather().path(name)


@pytest.mark.parametrize(
    "path",
    [
        "docker/registry/v2/repositories/busybox/_manifests/tags/latest/index/sha256/" + HEX + "/link",
        "docker/registry/v2/repositories/busybox/_manifests/revisions/sha256/" + HEX + "/link",
        "docker/registry/v2/repositories/_manifests/tags/latest/current/link",
        "docker/registry/v2/blobs/sha256/96/" + HEX + "/data",
    ],
)
def test_docker_tag_inverse_rejects_other_paths(path):
    with pytest.raises(InvalidName):
        DockerTagPather().name(path)


def test_docker_tag_list_prefixes():
    pather = DockerTagPather()
    base = "docker/registry/v2/repositories"
    assert pather.list_prefix("") == f"{base}/"
    assert pather.list_prefix("library/ub") == f"{base}/library/ub"
    assert pather.list_prefix("library/ubuntu:") == f"{base}/library/ubuntu/_manifests/tags/"
    assert pather.list_prefix("library/ubuntu:2") == f"{base}/library/ubuntu/_manifests/tags/2"
    for bad in ("a:b:c", "../a:b", "a:b/c"):
        with pytest.raises(InvalidName):
            pather.list_prefix(bad)


def test_identity_paths():
    assert IdentityPather().path("a/b") == "a/b"
    assert IdentityPather("root").path("a/b") == "root/a/b"
    assert IdentityPather("root/").path("x") == "root/x"
    assert IdentityPather("root").name("root/a/b") == "a/b"
    assert IdentityPather().name("a/b") == "a/b"
    assert IdentityPather("root").list_prefix("a/") == "root/a/"
    assert IdentityPather().list_prefix("") == ""
    with pytest.raises(InvalidName):
        IdentityPather("root").name("rootx/a")
    for bad in ("", "/a", "a/", "a//b", "../a", "a/./b", "a\0b"):
        with pytest.raises(InvalidName):
            IdentityPather().path(bad)
    with pytest.raises(InvalidName):
        IdentityPather().list_prefix("../a")


def test_make_pather():
    assert make_pather("identity", "r") == IdentityPather("r")
    assert make_pather("sharded_docker_blob") == ShardedDockerBlobPather("")
    assert make_pather("docker_tag", "x") == DockerTagPather("x")
    with pytest.raises(ValueError, match="unknown name_path 'nope'"):
        make_pather("nope")
