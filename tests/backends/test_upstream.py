"""Upstream registries named by containerd's ``?ns=`` (``kraken.backends.upstream``): the repository names the
agent builds and the ``registry`` entries with ``ns_prefix`` and ``tag_ttl`` that read them, against a fake
upstream behind StubTreq on a ``task.Clock``."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from results import result_of
from treq.testing import StubTreq
from twisted.internet import task
from twisted.web.resource import Resource
from twisted.web.server import Request

from kraken import config as kconfig
from kraken.backends import BackendError, BlobNotFound, RegistryBackend, RegistryConfig
from kraken.backends.config import BackendConfig, build_backend
from kraken.backends.upstream import (
    UpstreamRegistry,
    build_registry,
    host_component,
    namespaced_repository,
    split_namespaced,
)
from kraken.core import Digest
from kraken.net.client import HTTPClientConfig
from kraken.origin.config import OriginConfig
from kraken.workers import InlineWorker

QUICK = HTTPClientConfig(timeout=5.0, retries=0, backoff=0.01, max_backoff=0.01)


class FakeUpstream(Resource):
    """Tags (``(repo, tag) -> manifest bytes``) served at ``/v2/<repo>/manifests/<tag>``; every request seen
    is kept as (Host header, method, path, Authorization)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[tuple[str, str], bytes] = {}
        self.seen: list[tuple[str, str, str, str | None]] = []

    def render(self, request: Request) -> bytes:
        path = request.path.decode()
        auth = request.getHeader("authorization")
        self.seen.append((request.getHeader("host") or "", request.method.decode(), path, auth))
        repo, _, tag = path.removeprefix("/v2/").rpartition("/manifests/")
        body = self.tags.get((repo, tag))
        if body is None:
            request.setResponseCode(404)
            return b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'
        request.setHeader("docker-content-digest", f"sha256:{hashlib.sha256(body).hexdigest()}")
        return body


class Harness:
    def __init__(self, **settings: Any) -> None:
        self.clock = task.Clock()
        self.upstream = FakeUpstream()
        self.stub = StubTreq(self.upstream)
        config = RegistryConfig(http_client=QUICK, **{"address": "http://upstream.test", **settings})
        self.backend = build_registry(config, http=self.stub, clock=self.clock, worker=InlineWorker())

    def run(self, coroutine: Any) -> Any:
        return result_of(coroutine, self.pump)

    def pump(self) -> None:
        self.clock.advance(0)
        self.stub.flush()

    def resolve(self, repo: str, tag: str) -> Digest:
        digest: Digest = self.run(self.backend.resolve_tag(repo, tag))  # type: ignore[attr-defined]
        return digest


# -- names --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "component"),
    [
        ("docker.io", "docker.io"),
        ("Docker.IO", "docker.io"),
        ("127.0.0.1:5000", "127.0.0.1_5000"),
        ("registry-1.example.com:443", "registry-1.example.com_443"),
        ("[::1]:5000", None),
        ("[2001:db8::1]", None),
    ],
)
def test_host_component(ns: str, component: str | None) -> None:
    assert host_component(ns) == component


def test_namespaced_repository_and_back() -> None:
    assert namespaced_repository("docker.io", "library/alpine") == "docker.io/library/alpine"
    assert split_namespaced("docker.io/library/alpine") == ("docker.io", "library/alpine")
    assert namespaced_repository("127.0.0.1:5000", "a/b") == "127.0.0.1_5000/a/b"
    assert split_namespaced("127.0.0.1_5000/a/b") == ("127.0.0.1:5000", "a/b")
    assert namespaced_repository("[::1]", "a") is None
    for bad in ("docker.io", "docker.io/"):
        with pytest.raises(ValueError, match="does not start with a registry host"):
            split_namespaced(bad)


# -- the backend an entry builds ----------------------------------------------------------------------------------


def test_a_plain_registry_entry_builds_the_plain_backend() -> None:
    harness = Harness()
    assert type(harness.backend) is RegistryBackend
    entry = BackendConfig(namespace="docker\\.io/.+", registry=RegistryConfig("h", ns_prefix=True))
    assert isinstance(build_backend(entry, InlineWorker(), task.Clock(), http=StubTreq(Resource())), UpstreamRegistry)


def test_ns_prefix_takes_the_host_off_and_fills_the_address() -> None:
    harness = Harness(address="http://{ns}", ns_prefix=True)
    body = b'{"schemaVersion": 2}'
    harness.upstream.tags[("library/alpine", "3")] = body
    assert harness.resolve("docker.io/library/alpine", "3") == Digest.from_bytes(body)
    assert harness.resolve("127.0.0.1_5000/library/alpine", "3") == Digest.from_bytes(body)
    assert [(host, path) for host, _, path, _ in harness.upstream.seen] == [
        ("docker.io", "/v2/library/alpine/manifests/3"),
        ("127.0.0.1:5000", "/v2/library/alpine/manifests/3"),
    ]


def test_a_blob_is_asked_under_the_upstream_repository(tmp_path: Path) -> None:
    harness = Harness(ns_prefix=True)
    with pytest.raises(BlobNotFound):
        harness.run(harness.backend.stat("docker.io/library/alpine", "ab" * 32))
    paths = [path for _, _, path, _ in harness.upstream.seen]
    assert paths == [f"/v2/library/alpine/blobs/sha256:{'ab' * 32}", f"/v2/library/alpine/manifests/sha256:{'ab' * 32}"]
    with pytest.raises(BlobNotFound):  # a name without a host prefix is nothing this entry can have
        harness.run(harness.backend.stat("alpine", "ab" * 32))


def test_upload_and_list_are_read_only(tmp_path: Path) -> None:
    harness = Harness(ns_prefix=True)
    with pytest.raises(BackendError, match="read-only"):
        harness.run(harness.backend.upload("docker.io/a", "x", str(tmp_path / "x")))
    with pytest.raises(BackendError, match="read-only"):
        harness.run(harness.backend.list())


# -- tags: tag_ttl ------------------------------------------------------------------------------------------------


def test_a_tag_is_remembered_for_tag_ttl_and_a_moved_tag_seen_after_it() -> None:
    harness = Harness(ns_prefix=True, tag_ttl=60.0)
    old, new = b'{"v": 1}', b'{"v": 2}'
    harness.upstream.tags[("library/alpine", "3")] = old
    assert harness.resolve("docker.io/library/alpine", "3") == Digest.from_bytes(old)
    harness.upstream.tags[("library/alpine", "3")] = new  # the tag moves upstream
    harness.clock.advance(59)
    assert harness.resolve("docker.io/library/alpine", "3") == Digest.from_bytes(old)
    assert len(harness.upstream.seen) == 1
    harness.clock.advance(2)
    assert harness.resolve("docker.io/library/alpine", "3") == Digest.from_bytes(new)
    assert len(harness.upstream.seen) == 2


def test_a_missing_tag_is_not_remembered() -> None:
    harness = Harness(ns_prefix=True, tag_ttl=60.0)
    with pytest.raises(BlobNotFound):
        harness.resolve("docker.io/library/alpine", "new")
    body = b'{"v": 3}'
    harness.upstream.tags[("library/alpine", "new")] = body
    assert harness.resolve("docker.io/library/alpine", "new") == Digest.from_bytes(body)


def test_without_tag_ttl_every_lookup_asks_upstream() -> None:
    harness = Harness(ns_prefix=True)
    harness.upstream.tags[("a", "1")] = b"{}"
    harness.resolve("docker.io/a", "1")
    harness.resolve("docker.io/a", "1")
    assert len(harness.upstream.seen) == 2


# -- config: credentials_file, {ns} -------------------------------------------------------------------------------


def _config(tmp_path: Path, registry: str) -> Any:
    path = tmp_path / "origin.yaml"
    path.write_text(f"backends:\n  - namespace: 'docker\\.io/.+'\n    registry: {registry}\n")
    return kconfig.build(OriginConfig, kconfig.load(str(path)))


def test_credentials_come_from_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "hub.yaml"
    secret.write_text("username: kraken\npassword: s3cret\n")
    config = _config(tmp_path, f"{{address: registry-1.docker.io, ns_prefix: true, credentials_file: '{secret}'}}")
    registry = config.backends[0].registry
    assert registry.credentials() == ("kraken", "s3cret")
    assert registry.basic() == "Basic a3Jha2VuOnMzY3JldA=="
    assert "s3cret" not in repr(registry)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot be read"),
        ("username: kraken\n", "exactly the keys username and password"),
        ("[1, 2]\n", "exactly the keys username and password"),
        ("username: ''\npassword: x\n", "username must be non-empty text"),
    ],
)
def test_a_bad_credentials_file_is_a_config_error(tmp_path: Path, content: str | None, message: str) -> None:
    secret = tmp_path / "hub.yaml"
    if content is not None:
        secret.write_text(content)
    with pytest.raises(kconfig.ConfigError) as caught:
        _config(tmp_path, f"{{address: h, credentials_file: '{secret}'}}")
    text = str(caught.value)
    assert "origin.yaml" in text and "backends" in text and message in text and str(secret) in text


def test_credentials_file_and_username_together_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "hub.yaml"
    secret.write_text("username: a\npassword: b\n")
    with pytest.raises(kconfig.ConfigError, match="either username and password or credentials_file"):
        _config(tmp_path, f"{{address: h, username: u, credentials_file: '{secret}'}}")


def test_the_ns_field_needs_ns_prefix(tmp_path: Path) -> None:
    with pytest.raises(kconfig.ConfigError, match="needs ns_prefix: true"):
        _config(tmp_path, "{address: 'https://{ns}'}")
    assert _config(tmp_path, "{address: 'https://{ns}', ns_prefix: true}").backends[0].registry.ns_prefix
