"""FSBackend: the conformance tests (inline worker; asynchronous worker on the reactor), the on-disk
layout, and atomicity when a transfer fails half way."""

from __future__ import annotations

import os

import pytest
from results import result_of
from twisted.internet.defer import Deferred

from kraken.backends import (
    BackendUnavailable,
    BlobNotFound,
    DockerTagPather,
    FSBackend,
    IdentityPather,
    InvalidName,
    ListPage,
    ShardedDockerBlobPather,
)
from kraken.backends import fs as fsmod
from kraken.workers import InlineWorker

from .conformance import NAMESPACE, BackendConformance, blob_name


class ReactorWorker:
    """Runs each job in a later reactor turn: asynchronous like a thread pool, without threads."""

    def __init__(self, reactor):
        self._reactor = reactor

    def run(self, f, *args, **kwargs):
        d = Deferred()

        def go():
            try:
                result = f(*args, **kwargs)
            except BaseException:
                d.errback()
            else:
                d.callback(result)

        self._reactor.callLater(0, go)
        return d


class TestFSIdentityInline(BackendConformance):
    @pytest.fixture
    def backend(self, tmp_path):
        return FSBackend(str(tmp_path / "store"), IdentityPather(), worker=InlineWorker())


class TestFSShardedInline(BackendConformance):
    @pytest.fixture
    def backend(self, tmp_path):
        return FSBackend(str(tmp_path / "store"), ShardedDockerBlobPather(), worker=InlineWorker())


class TestFSShardedOnTheReactor(BackendConformance):
    @pytest.fixture
    def backend(self, tmp_path, reactor):
        return FSBackend(str(tmp_path / "store"), ShardedDockerBlobPather(), worker=ReactorWorker(reactor))


class TestFSTagsInline(BackendConformance):
    """The docker_tag layout: names are repo:tag (hex tags keep the shared tests' ordering)."""

    def name(self, i, lead=""):
        return f"library/ubuntu:{blob_name(i, lead)}"

    @pytest.fixture
    def backend(self, tmp_path):
        return FSBackend(str(tmp_path / "store"), DockerTagPather(), worker=InlineWorker())

    def prefix(self, lead):
        return f"library/ubuntu:{lead}"


# -- fs specifics ------------------------------------------------------------------------------------------------

HEX = "96443a84ce518ac22acb2e985eda402b58ac19ce6f91980bde63726a79d80b36"


def fs(tmp_path, pather=None):
    return FSBackend(str(tmp_path / "store"), pather or IdentityPather(), worker=InlineWorker())


def source(tmp_path, data, filename="source"):
    path = tmp_path / filename
    path.write_bytes(data)
    return str(path)


def test_blobs_are_stored_where_docker_distribution_keeps_them(tmp_path):
    backend = fs(tmp_path, ShardedDockerBlobPather())
    result_of(backend.upload(NAMESPACE, f"sha256:{HEX}", source(tmp_path, b"layer")))
    stored = tmp_path / "store/docker/registry/v2/blobs/sha256/96" / HEX / "data"
    assert stored.read_bytes() == b"layer"
    assert oct(stored.stat().st_mode & 0o777) == oct(0o644)
    assert result_of(backend.list("")) == ListPage((HEX,), None)


def test_tags_are_stored_where_docker_distribution_keeps_them(tmp_path):
    backend = fs(tmp_path, DockerTagPather())
    link = f"sha256:{HEX}".encode()
    result_of(backend.upload(NAMESPACE, "library/ubuntu:22.04", source(tmp_path, link)))
    stored = tmp_path / "store/docker/registry/v2/repositories/library/ubuntu/_manifests/tags/22.04/current/link"
    assert stored.read_bytes() == link


def test_a_registry_directory_written_by_docker_distribution_is_readable(tmp_path):
    """Files laid out by hand as the registry's filesystem driver writes them (with the links and
    index entries it keeps beside them) read back as blobs and tags."""
    root = tmp_path / "store/docker/registry/v2"
    other = "0" * 64
    for rel, data in {
        f"blobs/sha256/96/{HEX}/data": b"manifest bytes",
        f"blobs/sha256/00/{other}/data": b"{}",
        f"repositories/library/ubuntu/_layers/sha256/{other}/link": f"sha256:{other}".encode(),
        f"repositories/library/ubuntu/_manifests/revisions/sha256/{HEX}/link": f"sha256:{HEX}".encode(),
        "repositories/library/ubuntu/_manifests/tags/22.04/current/link": f"sha256:{HEX}".encode(),
        f"repositories/library/ubuntu/_manifests/tags/22.04/index/sha256/{HEX}/link": f"sha256:{HEX}".encode(),
        "repositories/library/ubuntu/_manifests/tags/latest/current/link": f"sha256:{HEX}".encode(),
        "repositories/busybox/_manifests/tags/1.36/current/link": f"sha256:{other}".encode(),
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    blobs = fs(tmp_path, ShardedDockerBlobPather())
    tags = fs(tmp_path, DockerTagPather())
    assert result_of(blobs.list("")).names == (other, HEX)
    assert result_of(blobs.stat(NAMESPACE, f"sha256:{HEX}")).size == len(b"manifest bytes")
    assert result_of(tags.list("")).names == ("busybox:1.36", "library/ubuntu:22.04", "library/ubuntu:latest")
    assert result_of(tags.list("library/ubuntu:")).names == ("library/ubuntu:22.04", "library/ubuntu:latest")
    assert result_of(tags.list("library/ubuntu:l")).names == ("library/ubuntu:latest",)
    result_of(tags.download(NAMESPACE, "library/ubuntu:latest", str(tmp_path / "tag")))
    assert (tmp_path / "tag").read_bytes() == f"sha256:{HEX}".encode()


def test_pagination_ends_exactly_on_the_last_name(tmp_path):
    backend = fs(tmp_path)
    for i in range(6):
        result_of(backend.upload(NAMESPACE, f"n{i}", source(tmp_path, b"x")))
    first = result_of(backend.list("", limit=3))
    assert first == ListPage(("n0", "n1", "n2"), "n2")
    assert result_of(backend.list("", continuation=first.continuation, limit=3)) == ListPage(("n3", "n4", "n5"), None)


def test_identity_names_may_have_directories(tmp_path):
    backend = fs(tmp_path)
    for name in ("a/b/c", "a/b/d", "a/e", "ab"):
        result_of(backend.upload(NAMESPACE, name, source(tmp_path, name.encode())))
    assert result_of(backend.list("")).names == ("a/b/c", "a/b/d", "a/e", "ab")
    assert result_of(backend.list("a/")).names == ("a/b/c", "a/b/d", "a/e")
    assert result_of(backend.list("a/b/")).names == ("a/b/c", "a/b/d")
    assert result_of(backend.list("a")).names == ("a/b/c", "a/b/d", "a/e", "ab")


def test_a_directory_is_not_a_blob(tmp_path):
    backend = fs(tmp_path)
    result_of(backend.upload(NAMESPACE, "a/b", source(tmp_path, b"x")))
    with pytest.raises(BlobNotFound):
        result_of(backend.stat(NAMESPACE, "a"))
    with pytest.raises(BlobNotFound):
        result_of(backend.download(NAMESPACE, "a", str(tmp_path / "dest")))
    with pytest.raises(InvalidName):
        result_of(backend.upload(NAMESPACE, "a", source(tmp_path, b"y")))
    with pytest.raises(InvalidName):
        result_of(backend.upload(NAMESPACE, "a/b/c", source(tmp_path, b"y")))
    with pytest.raises(BlobNotFound):
        result_of(backend.stat(NAMESPACE, "a/b/c"))


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/../../b", "a//b", "a/./b", "", "a/"])
def test_names_cannot_leave_the_root(tmp_path, name):
    backend = fs(tmp_path)
    with pytest.raises(InvalidName):
        result_of(backend.upload(NAMESPACE, name, source(tmp_path, b"x")))
    with pytest.raises(InvalidName):
        result_of(backend.stat(NAMESPACE, name))
    assert not (tmp_path / "escape").exists()


def test_temporary_file_names_are_reserved_and_ignored_by_listing(tmp_path):
    backend = fs(tmp_path)
    with pytest.raises(InvalidName):
        result_of(backend.upload(NAMESPACE, f"dir/{fsmod.TEMP_PREFIX}x", source(tmp_path, b"x")))
    result_of(backend.upload(NAMESPACE, "dir/real", source(tmp_path, b"x")))
    (tmp_path / "store/dir" / f"{fsmod.TEMP_PREFIX}left-by-a-crash").write_bytes(b"partial")
    assert result_of(backend.list("")).names == ("dir/real",)


def test_listing_skips_files_outside_the_layout(tmp_path):
    backend = fs(tmp_path, ShardedDockerBlobPather())
    result_of(backend.upload(NAMESPACE, HEX, source(tmp_path, b"x")))
    blobs = tmp_path / "store/docker/registry/v2/blobs/sha256"
    (blobs / "96" / HEX / "other").write_bytes(b"?")
    (blobs / "ff").mkdir()
    (blobs / "ff" / "not-a-digest").mkdir()
    (blobs / "ff" / "not-a-digest" / "data").write_bytes(b"?")
    wrong_shard = blobs / "00" / HEX
    wrong_shard.mkdir(parents=True)
    (wrong_shard / "data").write_bytes(b"?")
    assert result_of(backend.list("")).names == (HEX,)


def test_list_rejects_a_limit_below_one(tmp_path):
    with pytest.raises(ValueError, match="limit"):
        result_of(fs(tmp_path).list("", limit=0))


def test_list_of_a_missing_root_is_empty(tmp_path):
    assert result_of(fs(tmp_path).list("")) == ListPage((), None)
    assert result_of(fs(tmp_path).list("some/dir/")) == ListPage((), None)


def failing_copy(after):
    """A ``_copy`` that writes ``after`` bytes, then fails as a backend read would."""

    def copy(src, out, *, read_fault=None, write_fault=None):
        out.write(src.read(after))
        raise BackendUnavailable("disk went away")

    return copy


def test_a_download_that_fails_half_way_leaves_no_partial_file(tmp_path, monkeypatch):
    backend = fs(tmp_path)
    result_of(backend.upload(NAMESPACE, "blob", source(tmp_path, b"0123456789")))
    local = tmp_path / "local"
    local.mkdir()
    (local / "dest").write_bytes(b"old")
    monkeypatch.setattr(fsmod, "_copy", failing_copy(5))
    with pytest.raises(BackendUnavailable):
        result_of(backend.download(NAMESPACE, "blob", str(local / "dest")))
    with pytest.raises(BackendUnavailable):
        result_of(backend.download(NAMESPACE, "blob", str(local / "new")))
    assert os.listdir(local) == ["dest"]
    assert (local / "dest").read_bytes() == b"old"


def test_an_upload_that_fails_half_way_keeps_the_old_blob(tmp_path, monkeypatch):
    backend = fs(tmp_path)
    result_of(backend.upload(NAMESPACE, "dir/blob", source(tmp_path, b"old")))
    monkeypatch.setattr(fsmod, "_copy", failing_copy(5))
    with pytest.raises(BackendUnavailable):
        result_of(backend.upload(NAMESPACE, "dir/blob", source(tmp_path, b"0123456789")))
    with pytest.raises(BackendUnavailable):
        result_of(backend.upload(NAMESPACE, "dir/other", source(tmp_path, b"0123456789")))
    assert os.listdir(tmp_path / "store/dir") == ["blob"]
    assert (tmp_path / "store/dir/blob").read_bytes() == b"old"


def test_a_read_error_on_the_backend_side_is_unavailable(tmp_path):
    class Broken:
        def read(self, n):
            raise OSError(5, "Input/output error")

    with pytest.raises(BackendUnavailable, match="Input/output error"):
        fsmod._copy(Broken(), open(os.devnull, "wb"), read_fault="/store/blob")
    with pytest.raises(OSError, match="Input/output error") as caught:
        fsmod._copy(Broken(), open(os.devnull, "wb"), write_fault="/store/blob")
    assert not isinstance(caught.value, BackendUnavailable)  # the caller's own file: its error as it is


def test_every_disk_operation_goes_through_the_worker(tmp_path):
    class Recording(InlineWorker):
        def __init__(self):
            self.calls = []

        def run(self, f, *args, **kwargs):
            self.calls.append(f.__name__)
            return super().run(f, *args, **kwargs)

    worker = Recording()
    backend = FSBackend(str(tmp_path / "store"), IdentityPather(), worker=worker)
    result_of(backend.upload(NAMESPACE, "b", source(tmp_path, b"x")))
    result_of(backend.stat(NAMESPACE, "b"))
    result_of(backend.download(NAMESPACE, "b", str(tmp_path / "d")))
    result_of(backend.list(""))
    assert worker.calls == ["_upload", "_stat", "_download", "_walk"]


def test_the_package_imports_without_the_reactor():
    import subprocess
    import sys

    code = "import sys, kraken.backends, kraken.backends.config; assert 'twisted.internet.reactor' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
