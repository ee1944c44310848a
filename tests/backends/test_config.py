"""The backends: section: validation with errors naming the key, and the router built from it."""

from __future__ import annotations

import attrs
import pytest
from twisted.internet.task import Clock

from kraken import config
from kraken.backends import FSBackend, IdentityPather, ShardedDockerBlobPather, ThrottledBackend
from kraken.backends.config import BackendConfig, FSBackendConfig, build_router
from kraken.throttle import TokenBucket
from kraken.workers import InlineWorker


@attrs.frozen
class Component:
    """A component config with a backends: section, as origin and build-index will have."""

    backends: tuple[BackendConfig, ...] = ()


def parse(backends, cls=Component):
    return config.build(cls, config.from_mapping({"backends": backends}, "origin.yaml")).backends


def test_a_full_section(tmp_path):
    entries = parse(
        [
            {
                "namespace": "library/.*",
                "fs": {"root": str(tmp_path / "blobs"), "name_path": "sharded_docker_blob"},
                "bandwidth": {"enabled": True, "egress_bits_per_sec": 8000, "ingress_bits_per_sec": 80000},
            },
            {"namespace": ".*", "fs": {"root": str(tmp_path / "other"), "name_path": "identity"}},
        ]
    )
    assert entries[0].kind() == ("fs", FSBackendConfig(str(tmp_path / "blobs"), "sharded_docker_blob"))
    assert entries[1].bandwidth.enabled is False
    assert entries[1].bandwidth.egress_bits_per_sec == 8 * 10**9  # Kraken's defaults for object stores
    assert entries[1].bandwidth.ingress_bits_per_sec == 80 * 10**9

    clock = Clock()
    router = build_router(entries, InlineWorker(), clock)
    library = router.backend_for("library/ubuntu")
    assert isinstance(library, ThrottledBackend)
    assert isinstance(library.backend, FSBackend)
    assert library.backend.root == str(tmp_path / "blobs")
    assert library.backend.pather == ShardedDockerBlobPather("")
    assert isinstance(library.egress, TokenBucket) and library.egress.rate == 1000
    assert isinstance(library.ingress, TokenBucket) and library.ingress.rate == 10000
    other = router.backend_for("team/app")
    assert isinstance(other, FSBackend) and other.pather == IdentityPather("")


def test_no_backends_by_default():
    assert parse([]) == ()
    assert config.build(Component, config.from_mapping({})).backends == ()


def test_an_entry_needs_a_backend_kind():
    with pytest.raises(config.ConfigError) as caught:
        parse([{"namespace": ".*"}])
    assert str(caught.value) == (
        "origin.yaml: backends.0: set exactly one backend kind (fs, s3, hdfs, http, registry) per entry, found none"
    )


@attrs.frozen
class TwoKinds(BackendConfig):
    """An entry with a second kind, as BackendConfig will have once s3 is added."""

    other: FSBackendConfig | None = None


@attrs.frozen
class WithTwo:
    backends: tuple[TwoKinds, ...] = ()


def test_an_entry_takes_only_one_backend_kind():
    fs = {"root": "/x", "name_path": "identity"}
    kinds = r"\(fs, s3, hdfs, http, registry, other\)"
    with pytest.raises(config.ConfigError, match=r"backends\.1: set exactly one backend kind " + kinds):
        parse([{"namespace": "a", "fs": fs}, {"namespace": "b", "fs": fs, "other": fs}], WithTwo)


def test_a_namespace_must_compile():
    with pytest.raises(config.ConfigError) as caught:
        parse([{"namespace": "library/(.*", "fs": {"root": "/x", "name_path": "identity"}}])
    message = str(caught.value)
    assert message.startswith("origin.yaml: backends.0: namespace: 'library/(.*' is not a valid regular expression")


def test_a_namespace_is_required():
    with pytest.raises(config.ConfigError, match=r"backends\.0: missing required key 'namespace'"):
        parse([{"fs": {"root": "/x", "name_path": "identity"}}])


def test_an_unknown_name_path_is_named():
    with pytest.raises(config.ConfigError) as caught:
        parse([{"namespace": ".*", "fs": {"root": "/x", "name_path": "sharded"}}])
    assert str(caught.value) == (
        "origin.yaml: backends.0.fs: name_path must be one of docker_tag, identity, sharded_docker_blob, not 'sharded'"
    )


def test_fs_needs_a_root_and_a_name_path():
    with pytest.raises(config.ConfigError, match=r"backends\.0\.fs: missing required key 'name_path'"):
        parse([{"namespace": ".*", "fs": {"root": "/x"}}])
    with pytest.raises(config.ConfigError, match=r"backends\.0\.fs: root must name a directory"):
        parse([{"namespace": ".*", "fs": {"root": "", "name_path": "identity"}}])


def test_unknown_keys_are_rejected():
    # Kraken nests the kind under backend:; here the kind is a key of the entry.
    with pytest.raises(config.ConfigError, match=r"backends\.0\.backend: unknown key"):
        parse([{"namespace": ".*", "backend": {"fs": {}}}])
    with pytest.raises(config.ConfigError, match=r"backends\.0\.bandwidth\.enable: unknown key"):
        parse([{"namespace": ".*", "fs": {"root": "/x", "name_path": "identity"}, "bandwidth": {"enable": True}}])


def test_bandwidth_must_be_positive():
    with pytest.raises(config.ConfigError, match=r"backends\.0\.bandwidth: egress_bits_per_sec must be positive"):
        parse(
            [
                {
                    "namespace": ".*",
                    "fs": {"root": "/x", "name_path": "identity"},
                    "bandwidth": {"enabled": True, "egress_bits_per_sec": 0},
                }
            ]
        )


def test_the_section_loads_from_yaml(tmp_path):
    path = tmp_path / "origin.yaml"
    path.write_text(
        "backends:\n"
        "  - namespace: 'library/.*'\n"
        f"    fs: {{root: {tmp_path}/blobs, name_path: docker_tag}}\n"
        "  - namespace: 'library/(.*'\n"
        f"    fs: {{root: {tmp_path}/blobs, name_path: identity}}\n"
    )
    with pytest.raises(config.ConfigError) as caught:
        config.build(Component, config.load(str(path)))
    assert str(caught.value).startswith(f"{path}: backends.1: namespace:")


def _http_client():
    from treq.client import HTTPClient
    from twisted.internet.testing import MemoryReactorClock
    from twisted.web.client import Agent

    return HTTPClient(Agent(MemoryReactorClock()))


def test_http_kinds_build_with_the_injected_client():
    from kraken.backends import HTTPBackend, RegistryBackend
    from kraken.backends.s3 import S3Backend

    entries = parse(
        [
            {"namespace": "s3/.*", "s3": {"bucket": "b", "endpoint": "http://127.0.0.1:9000"}},
            {"namespace": "http/.*", "http": {"download_url": "http://blobs.example/{hex}"}},
            {"namespace": ".*", "registry": {"address": "mirror.example:5000", "tls": False, "username": "u"}},
        ]
    )
    assert [e.kind()[0] for e in entries] == ["s3", "http", "registry"]
    router = build_router(entries, InlineWorker(), Clock(), http=_http_client())
    assert isinstance(router.backend_for("s3/a"), S3Backend)
    assert isinstance(router.backend_for("http/a"), HTTPBackend)
    assert isinstance(router.backend_for("library/ubuntu"), RegistryBackend)
    assert entries[2].registry.base_url() == "http://mirror.example:5000"


def test_http_kinds_need_the_client():
    entries = parse([{"namespace": ".*", "http": {"download_url": "http://blobs.example/{digest}"}}])
    with pytest.raises(ValueError, match="the http backend talks HTTP: build it with http="):
        build_router(entries, InlineWorker(), Clock())


def test_http_and_registry_settings_are_checked():
    with pytest.raises(config.ConfigError, match=r"backends\.0\.http: download_url must contain \{digest\} or \{hex\}"):
        parse([{"namespace": ".*", "http": {"download_url": "http://blobs.example/blob"}}])
    with pytest.raises(config.ConfigError, match=r"backends\.0\.http: download_url must be an http:// or https:// URL"):
        parse([{"namespace": ".*", "http": {"download_url": "ftp://blobs.example/{hex}"}}])
    with pytest.raises(config.ConfigError, match=r"backends\.0\.registry: missing required key 'address'"):
        parse([{"namespace": ".*", "registry": {}}])
    with pytest.raises(config.ConfigError, match=r"backends\.0\.registry: a password needs a username"):
        parse([{"namespace": ".*", "registry": {"address": "r:5000", "password": "p"}}])
