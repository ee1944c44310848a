"""What every ``IBackend`` must do: a mixin of tests, run for each implementation.

Use it in a test class that provides a ``backend`` fixture (a fresh, empty
backend of the kind under test)::

    class TestFSBackend(BackendConformance):
        @pytest.fixture
        def backend(self, tmp_path):
            return FSBackend(str(tmp_path / "store"), IdentityPather(), worker=InlineWorker())

The tests are ``async`` and run on the reactor (``pytest_twisted``), so a
backend that talks to a real server (moto's S3) is tested the same way as one
whose worker runs inline (which simply never waits). Names are 64-hex blob
names, valid for the ``identity`` and ``sharded_docker_blob`` pathers; a
backend with another layout overrides ``name`` and ``prefix``. Local files live in
``tmp_path / "local"``.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from kraken.backends import BlobInfo, BlobNotFound, IBackend, ListPage

NAMESPACE = "library/conformance"


def blob_name(i: int, lead: str = "") -> str:
    """A 64-hex name, distinct per ``i``, starting with ``lead``."""
    return lead + hashlib.sha256(f"blob-{i}".encode()).hexdigest()[len(lead) :]


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def list_all(backend, prefix="", limit=3):
    """Every page of a listing, as (names, continuation) pairs."""
    pages = []
    continuation = None
    while True:
        page = await backend.list(prefix, continuation=continuation, limit=limit)
        assert isinstance(page, ListPage)
        pages.append(page)
        assert len(page.names) <= limit
        if page.continuation is None:
            return pages
        assert len(pages) < 100, "the listing never ends"
        continuation = page.continuation


class BackendConformance:
    namespace = NAMESPACE

    def name(self, i: int, lead: str = "") -> str:
        return blob_name(i, lead)

    def prefix(self, lead: str) -> str:
        """The list prefix of every ``name(i, lead)``."""
        return lead

    @pytest.fixture
    def local(self, tmp_path):
        path = tmp_path / "local"
        path.mkdir()
        return path

    def write(self, local, filename: str, data: bytes) -> str:
        path = local / filename
        path.write_bytes(data)
        return str(path)

    async def put(self, backend, local, name: str, data: bytes) -> None:
        await backend.upload(self.namespace, name, self.write(local, f"up-{len(os.listdir(local))}", data))

    # -- interface and stat ---------------------------------------------------------------------------------------

    def test_provides_ibackend(self, backend):
        assert verifyObject(IBackend, backend)

    @pytest_twisted.ensureDeferred
    async def test_stat_of_a_missing_blob_raises_blob_not_found(self, backend):
        with pytest.raises(BlobNotFound):
            await backend.stat(self.namespace, self.name(0))

    # -- round trips ----------------------------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_upload_then_stat_and_download_round_trip(self, backend, local):
        data = os.urandom(3 * (1 << 20) + 17)
        source = self.write(local, "source", data)
        await backend.upload(self.namespace, self.name(1), source)
        assert await backend.stat(self.namespace, self.name(1)) == BlobInfo(len(data))
        dest = str(local / "dest")
        await backend.download(self.namespace, self.name(1), dest)
        assert read(dest) == data
        assert sorted(os.listdir(local)) == ["dest", "source"]  # no temporary file left behind
        assert read(source) == data  # the source is not consumed

    @pytest_twisted.ensureDeferred
    async def test_an_empty_blob_round_trips(self, backend, local):
        await self.put(backend, local, self.name(2), b"")
        assert (await backend.stat(self.namespace, self.name(2))).size == 0
        dest = str(local / "dest")
        await backend.download(self.namespace, self.name(2), dest)
        assert read(dest) == b""

    @pytest_twisted.ensureDeferred
    async def test_download_replaces_an_existing_file(self, backend, local):
        await self.put(backend, local, self.name(3), b"new contents")
        dest = self.write(local, "dest", b"old contents that are longer")
        await backend.download(self.namespace, self.name(3), dest)
        assert read(dest) == b"new contents"

    @pytest_twisted.ensureDeferred
    async def test_a_failed_download_leaves_no_partial_file(self, backend, local):
        with pytest.raises(BlobNotFound):
            await backend.download(self.namespace, self.name(4), str(local / "dest"))
        assert os.listdir(local) == []
        dest = self.write(local, "dest", b"keep me")
        with pytest.raises(BlobNotFound):
            await backend.download(self.namespace, self.name(4), dest)
        assert os.listdir(local) == ["dest"]
        assert read(dest) == b"keep me"

    @pytest_twisted.ensureDeferred
    async def test_upload_overwrites(self, backend, local):
        await self.put(backend, local, self.name(5), b"first version, the longer one")
        await self.put(backend, local, self.name(5), b"second")
        assert (await backend.stat(self.namespace, self.name(5))).size == len(b"second")
        dest = str(local / "dest")
        await backend.download(self.namespace, self.name(5), dest)
        assert read(dest) == b"second"
        page = await backend.list("")
        assert page.names == (self.name(5),)

    @pytest_twisted.ensureDeferred
    async def test_uploading_a_missing_local_file_raises_and_stores_nothing(self, backend, local):
        with pytest.raises(FileNotFoundError):
            await backend.upload(self.namespace, self.name(6), str(local / "absent"))
        with pytest.raises(BlobNotFound):
            await backend.stat(self.namespace, self.name(6))

    @pytest_twisted.ensureDeferred
    async def test_blobs_are_independent(self, backend, local):
        await self.put(backend, local, self.name(7), b"seven")
        await self.put(backend, local, self.name(8), b"eight!")
        assert (await backend.stat(self.namespace, self.name(7))).size == 5
        assert (await backend.stat(self.namespace, self.name(8))).size == 6

    # -- listing --------------------------------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_listing_an_empty_backend(self, backend):
        assert await backend.list("") == ListPage((), None)

    @pytest_twisted.ensureDeferred
    async def test_listing_paginates_in_sorted_order(self, backend, local):
        names = [self.name(i) for i in range(10, 17)]
        for n in names:
            await self.put(backend, local, n, n.encode())
        pages = await list_all(backend, "", limit=3)
        listed = [n for page in pages for n in page.names]
        assert listed == sorted(names)
        assert len(pages) >= 3
        assert all(page.names for page in pages[:-1])  # only the last page may be empty

    @pytest_twisted.ensureDeferred
    async def test_one_page_when_the_limit_is_large(self, backend, local):
        names = [self.name(i) for i in range(20, 24)]
        for n in names:
            await self.put(backend, local, n, b"x")
        assert await backend.list("", limit=100) == ListPage(tuple(sorted(names)), None)

    @pytest_twisted.ensureDeferred
    async def test_listing_by_prefix(self, backend, local):
        abc = [self.name(i, "abc") for i in range(30, 33)]
        abd = [self.name(i, "abd") for i in range(33, 35)]
        other = [self.name(i, "ff") for i in range(35, 37)]
        for n in abc + abd + other:
            await self.put(backend, local, n, b"x")

        async def listed(lead, limit):
            return [n for page in await list_all(backend, self.prefix(lead), limit=limit) for n in page.names]

        assert await listed("abc", 2) == sorted(abc)
        assert await listed("ab", 2) == sorted(abc + abd)
        assert await listed("a", 10) == sorted(abc + abd)
        assert [n for page in await list_all(backend, "", limit=4) for n in page.names] == sorted(abc + abd + other)
        assert await backend.list(self.prefix("abe")) == ListPage((), None)
