"""The WebHDFS backend against an in-process fake namenode and datanode.

No real HDFS cluster can run on these machines (there are no Java or Hadoop
packages here), so the fake follows the protocol as Apache Hadoop's "WebHDFS
REST API" page documents it: JSON bodies (``FileStatus``, ``FileStatuses``,
``{"boolean": ...}``), ``307 Temporary Redirect`` with a datanode
``Location`` for OPEN and CREATE (the namenode refuses data), ``201 Created``
from the datanode, RENAME that does not overwrite (answers false), and
``RemoteException`` JSON with the documented status codes on errors. What
was not checked against a real cluster: Kerberos/delegation tokens (not
supported), HA namenode behaviour beyond a refused connection or a
``StandbyException``, and real datanode pipelines.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import pytest
import pytest_twisted
from twisted.web.resource import Resource
from twisted.web.server import Site

from kraken import config
from kraken.backends import BackendUnavailable, BlobNotFound, HDFSBackend, HDFSConfig
from kraken.backends.config import BackendConfig, build_router
from kraken.net.client import HTTPClientConfig
from kraken.workers import ThreadWorker

from .conformance import BackendConformance, blob_name

NAMESPACE = "library/test"
PREFIX = "/webhdfs/v1"


class FakeHDFS:
    """The file system both fake servers share: files (path -> bytes) and directories."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = {"/"}
        self.requests: list[tuple[str, bytes, str, str]] = []  # (server, method, op, path)
        self.namenode_data = 0
        self.datanode_url = ""
        self.fail_datanode_puts = False
        self.standby = False

    def mkdirs(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(len(parts) + 1):
            self.dirs.add("/" + "/".join(parts[:i]))

    def parent(self, path: str) -> str:
        return path.rstrip("/").rpartition("/")[0] or "/"


def _error(request: Any, code: int, exception: str, message: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    java = {"FileNotFoundException": "java.io.FileNotFoundException"}.get(exception, f"org.apache.hadoop.{exception}")
    return json.dumps({"RemoteException": {"exception": exception, "javaClassName": java, "message": message}}).encode()


def _ok(request: Any, doc: Any) -> bytes:
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(doc).encode()


def _parse(request: Any) -> tuple[str, str, dict[str, str]]:
    parts = urlsplit(request.uri.decode())
    path = unquote(parts.path).removeprefix(PREFIX) or "/"
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    return path.rstrip("/") or "/", params.get("op", "").upper(), params


def _status(fs: FakeHDFS, path: str, suffix: str) -> dict[str, Any]:
    is_file = path in fs.files
    return {
        "pathSuffix": suffix,
        "type": "FILE" if is_file else "DIRECTORY",
        "length": len(fs.files[path]) if is_file else 0,
        "owner": "kraken",
        "permission": "644" if is_file else "755",
        "replication": 3 if is_file else 0,
    }


class NameNode(Resource):
    isLeaf = True

    def __init__(self, fs: FakeHDFS) -> None:
        super().__init__()
        self.fs = fs
        self.users: set[str] = set()

    def render(self, request: Any) -> bytes:
        fs = self.fs
        path, op, params = _parse(request)
        fs.requests.append(("namenode", request.method, op, path))
        self.users.add(params.get("user.name", ""))
        data = request.content.read()
        if data:
            fs.namenode_data += len(data)
            return _error(request, 400, "IllegalArgumentException", "the namenode takes no data")
        if fs.standby:
            return _error(request, 403, "StandbyException", "Operation category READ is not supported in state standby")
        method = request.method
        if method == b"GET" and op == "GETFILESTATUS":
            if path not in fs.files and path not in fs.dirs:
                return _error(request, 404, "FileNotFoundException", f"File does not exist: {path}")
            return _ok(request, {"FileStatus": _status(fs, path, "")})
        if method == b"GET" and op == "LISTSTATUS":
            if path in fs.files:
                return _ok(request, {"FileStatuses": {"FileStatus": [_status(fs, path, "")]}})
            if path not in fs.dirs:
                return _error(request, 404, "FileNotFoundException", f"File {path} does not exist.")
            base = path.rstrip("/")
            children = sorted(p for p in fs.files.keys() | fs.dirs if p != "/" and fs.parent(p) == (base or "/"))
            statuses = [_status(fs, c, c.rpartition("/")[2]) for c in children]
            return _ok(request, {"FileStatuses": {"FileStatus": statuses}})
        if method == b"GET" and op == "OPEN":
            if path not in fs.files:
                return _error(request, 404, "FileNotFoundException", f"File does not exist: {path}")
            return self._redirect(request, path, "OPEN&offset=0")
        if method == b"PUT" and op == "CREATE":
            if path in fs.files and params.get("overwrite") != "true":
                return _error(request, 403, "FileAlreadyExistsException", f"{path} already exists")
            return self._redirect(request, path, "CREATE&overwrite=" + params.get("overwrite", "false"))
        if method == b"PUT" and op == "MKDIRS":
            if path in fs.files:
                return _error(request, 403, "FileAlreadyExistsException", f"{path} is a file")
            fs.mkdirs(path)
            return _ok(request, {"boolean": True})
        if method == b"PUT" and op == "RENAME":
            dest = params.get("destination", "")
            ok = path in fs.files and dest not in fs.files and dest not in fs.dirs and fs.parent(dest) in fs.dirs
            if ok:
                fs.files[dest] = fs.files.pop(path)
            return _ok(request, {"boolean": ok})
        if method == b"DELETE" and op == "DELETE":
            return _ok(request, {"boolean": fs.files.pop(path, None) is not None})
        return _error(request, 400, "IllegalArgumentException", f"unsupported {method.decode()} op={op}")

    def _redirect(self, request: Any, path: str, query: str) -> bytes:
        request.setResponseCode(307)
        location = f"{self.fs.datanode_url}{PREFIX}{path}?op={query}&namenoderpcaddress=nn:8020"
        request.setHeader(b"location", location.encode())
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"0")
        return b""


class DataNode(Resource):
    isLeaf = True

    def __init__(self, fs: FakeHDFS) -> None:
        super().__init__()
        self.fs = fs
        self.received = 0

    def render(self, request: Any) -> bytes:
        fs = self.fs
        path, op, _ = _parse(request)
        fs.requests.append(("datanode", request.method, op, path))
        if request.method == b"GET" and op == "OPEN":
            if path not in fs.files:
                return _error(request, 404, "FileNotFoundException", f"File does not exist: {path}")
            data = fs.files[path]
            request.setHeader(b"content-type", b"application/octet-stream")
            request.setHeader(b"content-length", str(len(data)).encode())
            return data
        if request.method == b"PUT" and op == "CREATE":
            data = request.content.read()
            self.received += len(data)
            if fs.fail_datanode_puts:
                return _error(request, 500, "IOException", "all datanodes are bad")
            fs.mkdirs(fs.parent(path))
            fs.files[path] = data
            request.setResponseCode(201)
            request.setHeader(b"location", f"hdfs://nn:8020{path}".encode())
            request.setHeader(b"content-length", b"0")
            return b""
        return _error(request, 400, "IllegalArgumentException", f"unsupported op={op} on a datanode")


async def _listen(reactor: Any, resource: Resource) -> Any:
    from twisted.internet.endpoints import TCP4ServerEndpoint

    site = Site(resource)
    site.timeOut = None
    return await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)


@attrs.define
class Cluster:
    fs: FakeHDFS
    namenode: NameNode
    datanode: DataNode
    address: str  # the namenode's host:port
    dead: str  # a host:port nobody listens on


@pytest_twisted.async_yield_fixture()
async def cluster(reactor: Any) -> Any:
    fs = FakeHDFS()
    namenode, datanode = NameNode(fs), DataNode(fs)
    nn_port = await _listen(reactor, namenode)
    dn_port = await _listen(reactor, datanode)
    dead_port = await _listen(reactor, Resource())
    dead = f"127.0.0.1:{dead_port.getHost().port}"
    await dead_port.stopListening()
    fs.datanode_url = f"http://127.0.0.1:{dn_port.getHost().port}"
    try:
        yield Cluster(fs, namenode, datanode, f"127.0.0.1:{nn_port.getHost().port}", dead)
    finally:
        await nn_port.stopListening()
        await dn_port.stopListening()


def _backend(reactor: Any, http: Any, namenodes: list[str], **settings: Any) -> HDFSBackend:
    client = HTTPClientConfig(timeout=10.0, retries=1, backoff=0.01, max_backoff=0.01)
    config = HDFSConfig(namenodes=namenodes, username="kraken", http_client=client, **settings)
    return HDFSBackend.create(config, http=http, clock=reactor, worker=ThreadWorker(reactor, reactor.getThreadPool()))


class TestHDFSConformance(BackendConformance):
    @pytest.fixture
    def backend(self, reactor: Any, http: Any, cluster: Cluster) -> HDFSBackend:
        return _backend(reactor, http, [cluster.address])


class TestShardedHDFSConformance(BackendConformance):
    @pytest.fixture
    def backend(self, reactor: Any, http: Any, cluster: Cluster) -> HDFSBackend:
        return _backend(reactor, http, [cluster.address], name_path="sharded_docker_blob")


HEX = blob_name(1)
FINAL = f"/infra/dockerRegistry/{HEX}"


@pytest_twisted.ensureDeferred
async def test_layout_user_and_redirects(reactor: Any, http: Any, cluster: Cluster, tmp_path: Any) -> None:
    backend = _backend(reactor, http, [cluster.address])
    source = tmp_path / "source"
    source.write_bytes(b"x" * 100_000)
    await backend.upload(NAMESPACE, HEX, str(source))
    assert cluster.fs.files == {FINAL: b"x" * 100_000}
    assert cluster.fs.namenode_data == 0  # the data went to the datanode only
    assert cluster.datanode.received == 100_000
    assert cluster.namenode.users == {"kraken"}
    ops = [(server, op) for server, _, op, _ in cluster.fs.requests]
    assert ops == [
        ("namenode", "CREATE"),
        ("datanode", "CREATE"),
        ("namenode", "MKDIRS"),
        ("namenode", "RENAME"),
    ]
    create = cluster.fs.requests[0][3]
    assert create.startswith("/infra/dockerRegistry/_uploads/")
    cluster.fs.requests.clear()
    await backend.download(NAMESPACE, HEX, str(tmp_path / "dest"))
    assert (tmp_path / "dest").read_bytes() == b"x" * 100_000
    assert [(s, op, p) for s, _, op, p in cluster.fs.requests] == [
        ("namenode", "OPEN", FINAL),
        ("datanode", "OPEN", FINAL),
    ]


@pytest_twisted.ensureDeferred
async def test_sharded_layout(reactor: Any, http: Any, cluster: Cluster, tmp_path: Any) -> None:
    backend = _backend(reactor, http, [cluster.address], name_path="sharded_docker_blob", root_directory="/r")
    (tmp_path / "s").write_bytes(b"abc")
    await backend.upload(NAMESPACE, f"sha256:{HEX}", str(tmp_path / "s"))
    assert list(cluster.fs.files) == [f"/r/docker/registry/v2/blobs/sha256/{HEX[:2]}/{HEX}/data"]
    assert (await backend.list(HEX[:3])).names == (HEX,)


@pytest_twisted.ensureDeferred
async def test_failover_to_the_second_namenode(reactor: Any, http: Any, cluster: Cluster, tmp_path: Any) -> None:
    backend = _backend(reactor, http, [cluster.dead, cluster.address])
    (tmp_path / "s").write_bytes(b"data")
    await backend.upload(NAMESPACE, HEX, str(tmp_path / "s"))
    assert (await backend.stat(NAMESPACE, HEX)).size == 4
    await backend.download(NAMESPACE, HEX, str(tmp_path / "d"))
    assert (tmp_path / "d").read_bytes() == b"data"
    assert (await backend.list("")).names == (HEX,)


@pytest_twisted.ensureDeferred
async def test_all_namenodes_down_is_unavailable(reactor: Any, http: Any, cluster: Cluster, tmp_path: Any) -> None:
    backend = _backend(reactor, http, [cluster.dead, cluster.dead])
    with pytest.raises(BackendUnavailable):
        await backend.stat(NAMESPACE, HEX)
    with pytest.raises(BackendUnavailable):
        await backend.download(NAMESPACE, HEX, str(tmp_path / "d"))
    assert list(tmp_path.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_a_standby_namenode_is_skipped(reactor: Any, http: Any, cluster: Cluster) -> None:
    cluster.fs.standby = True
    backend = _backend(reactor, http, [cluster.address])
    with pytest.raises(BackendUnavailable, match="standby"):
        await backend.stat(NAMESPACE, HEX)


@pytest_twisted.ensureDeferred
async def test_a_failed_datanode_write_leaves_nothing_visible(
    reactor: Any, http: Any, cluster: Cluster, tmp_path: Any
) -> None:
    cluster.fs.fail_datanode_puts = True
    backend = _backend(reactor, http, [cluster.address])
    (tmp_path / "s").write_bytes(b"partial" * 1000)
    with pytest.raises(BackendUnavailable):
        await backend.upload(NAMESPACE, HEX, str(tmp_path / "s"))
    assert FINAL not in cluster.fs.files
    assert cluster.fs.files == {}
    assert not any(op in ("RENAME", "MKDIRS") for _, _, op, _ in cluster.fs.requests)
    with pytest.raises(BlobNotFound):
        await backend.stat(NAMESPACE, HEX)
    assert (await backend.list("")).names == ()


@pytest_twisted.ensureDeferred
async def test_the_upload_directory_is_not_listed(reactor: Any, http: Any, cluster: Cluster, tmp_path: Any) -> None:
    cluster.fs.mkdirs("/infra/dockerRegistry/_uploads")
    cluster.fs.files["/infra/dockerRegistry/_uploads/leftover"] = b"x"
    backend = _backend(reactor, http, [cluster.address])
    assert (await backend.list("")).names == ()


@attrs.frozen
class Component:
    backends: tuple[BackendConfig, ...] = ()


def test_the_hdfs_kind_builds(reactor: Any, http: Any) -> None:
    from kraken.workers import InlineWorker

    section = {"backends": [{"namespace": ".*", "hdfs": {"namenodes": ["nn1:50070", "nn2:50070"], "username": "u"}}]}
    entries = config.build(Component, config.from_mapping(section, "origin.yaml")).backends
    assert entries[0].kind()[0] == "hdfs"
    assert entries[0].hdfs.namenodes == ("nn1:50070", "nn2:50070")
    assert entries[0].hdfs.root_directory == "/infra/dockerRegistry/"
    router = build_router(entries, InlineWorker(), reactor, http=http)
    assert isinstance(router.backend_for("library/ubuntu"), HDFSBackend)
    bad = {"backends": [{"namespace": ".*", "hdfs": {"namenodes": ["nn1"]}}]}
    with pytest.raises(config.ConfigError, match="namenode is host:port"):
        config.build(Component, config.from_mapping(bad, "o.yaml"))
