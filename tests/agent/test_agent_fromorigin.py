"""Blobs streamed from an origin that is still fetching them (``kraken.agent.fromorigin.OriginStreams``): a real
store on disk, an origin's answer fed by hand, the reads through ``StreamingBlob``'s reader; nothing is installed
unless the whole digest matches, and the file being written is never in the cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from results import result_of
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from kraken import config as kconfig
from kraken.agent.config import AgentConfig
from kraken.agent.fromorigin import OriginStreams
from kraken.core import Digest, MetaInfo, PieceLengthRule
from kraken.net import HTTPStatusError
from kraken.origin.client import STREAM_HEADER
from kraken.registry.streaming import StreamingBlob
from kraken.store import CAStore
from kraken.workers import InlineWorker

NS = "127.0.0.1_5000/library/app"
DATA = os.urandom(3000)
DIGEST = Digest.from_bytes(DATA)
INFO = MetaInfo.from_bytes(DATA, 1024)


class Transport:
    """A response body's transport: pause, resume, stop."""

    def __init__(self) -> None:
        self.stopped = False

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True


class Response:
    """An origin's answer whose body the test feeds (``send``, ``end``)."""

    def __init__(self, code: int, length: int) -> None:
        self.code = code
        self.length = length
        self.body: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.body = protocol
        protocol.makeConnection(Transport())

    def send(self, data: bytes) -> None:
        self.body.dataReceived(data)

    def end(self, reason: BaseException | None = None) -> None:
        self.body.connectionLost(Failure(reason or ResponseDone()))


class Origins:
    def __init__(self, *answers: Response | Exception) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, Digest, Any]] = []

    async def get(self, namespace: str, digest: Digest, *, method: str = "GET", headers: Any = None) -> Any:
        self.asked.append((namespace, digest, headers))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def store(tmp_path: Path) -> CAStore:
    return CAStore(
        str(tmp_path / "agent"), worker=InlineWorker(), piece_rule=PieceLengthRule.default(), now=lambda: 0.0
    )


def streams(
    store: CAStore,
    tmp_path: Path,
    origins: Origins,
    info: MetaInfo | None = INFO,
    seeded: list[tuple[str, MetaInfo]] | None = None,
) -> OriginStreams:
    """``seeded``: where the blobs the streams installed are told (the scheduler's ``seed`` in the agent)."""

    async def metainfo(namespace: str, digest: Digest) -> MetaInfo | None:
        return info

    tmp = str(tmp_path / "agent" / "tmp")
    told = seeded if seeded is not None else []
    return OriginStreams(
        origins, store, tmp, metainfo=metainfo, worker=InlineWorker(), clock=Clock(), timeout=30.0,
        installed=lambda namespace, info: told.append((namespace, info)),
    )  # fmt: skip


def read_all(resource: StreamingBlob, upto: int) -> bytes:
    return result_of(resource.blob.read(0, upto))


def test_a_blob_the_origin_is_fetching_is_served_as_it_arrives_and_installed_once_proven(
    store: CAStore, tmp_path: Path
) -> None:
    response = Response(200, len(DATA))
    origins = Origins(response)
    seeded: list[tuple[str, MetaInfo]] = []
    s = streams(store, tmp_path, origins, seeded=seeded)
    resource = result_of(s.resource(NS, DIGEST))
    assert isinstance(resource, StreamingBlob) and resource.length == len(DATA)
    assert origins.asked == [(NS, DIGEST, {STREAM_HEADER: [b"1"]})]
    verified = resource.blob.verified()
    response.send(DATA[:1500])
    assert read_all(resource, 1500) == DATA[:1500]
    assert not verified.called and result_of(store.stat(DIGEST)) is None  # nothing in the cache before the proof
    assert seeded == []
    joined = result_of(s.resource(NS, DIGEST))  # a second request joins the same stream
    assert isinstance(joined, StreamingBlob) and len(origins.asked) == 1
    response.send(DATA[1500:])
    response.end()
    assert verified.called and result_of(store.stat(DIGEST)) == len(DATA)
    assert result_of(store.metainfo(DIGEST)) == INFO
    assert seeded == [(NS, INFO)]  # this host seeds it now
    assert os.listdir(tmp_path / "agent" / "tmp") == []
    resource.blob.close()
    joined.blob.close()
    assert result_of(s.resource(NS, DIGEST)) is None  # in the cache now: served as ever


def test_a_wrong_digest_installs_nothing_and_fails_the_readers(store: CAStore, tmp_path: Path) -> None:
    response = Response(200, len(DATA))
    seeded: list[tuple[str, MetaInfo]] = []
    resource = result_of(streams(store, tmp_path, Origins(response), seeded=seeded).resource(NS, DIGEST))
    verified = resource.blob.verified()
    failures: list[Failure] = []
    verified.addErrback(failures.append)
    response.send(DATA[::-1])
    response.end()
    assert failures and "not sha256:" in failures[0].getErrorMessage()
    assert result_of(store.stat(DIGEST)) is None and seeded == []
    assert os.listdir(tmp_path / "agent" / "tmp") == []
    resource.blob.close()


def test_an_origin_that_goes_away_midway_installs_nothing(store: CAStore, tmp_path: Path) -> None:
    response = Response(200, len(DATA))
    resource = result_of(streams(store, tmp_path, Origins(response)).resource(NS, DIGEST))
    failures: list[Failure] = []
    resource.blob.verified().addErrback(failures.append)
    response.send(DATA[:100])
    response.end(ConnectionLost())
    assert failures and result_of(store.stat(DIGEST)) is None
    assert os.listdir(tmp_path / "agent" / "tmp") == []
    resource.blob.close()


def test_metainfo_of_another_length_installs_nothing(store: CAStore, tmp_path: Path) -> None:
    response = Response(200, len(DATA))
    other = MetaInfo.from_bytes(DATA[:-1], 1024)
    resource = result_of(streams(store, tmp_path, Origins(response), info=other).resource(NS, DIGEST))
    failures: list[Failure] = []
    resource.blob.verified().addErrback(failures.append)
    response.send(DATA)
    response.end()
    assert failures and result_of(store.stat(DIGEST)) is None
    resource.blob.close()


@pytest.mark.parametrize(
    "answer",
    [Response(204, 0), Response(404, 0), HTTPStatusError("GET", "http://origin", 503), ConnectionLost()],
    ids=["held: peer to peer", "not found", "failing origin", "unreachable origin"],
)
def test_anything_but_a_stream_takes_the_usual_path(store: CAStore, tmp_path: Path, answer: Any) -> None:
    assert result_of(streams(store, tmp_path, Origins(answer)).resource(NS, DIGEST)) is None


def test_stream_from_origins_is_off_by_default_and_a_bad_url_is_a_config_error(tmp_path: Path) -> None:
    assert not AgentConfig().stream_from_origins
    path = tmp_path / "agent.yaml"
    path.write_text('stream_from_origins: ["origin-1:15002"]\n')
    with pytest.raises(kconfig.ConfigError) as caught:
        kconfig.build(AgentConfig, kconfig.load(str(path)))
    assert "agent.yaml" in str(caught.value) and "stream_from_origins" in str(caught.value)
    path.write_text('stream_from_origins: ["http://origin-1:15002", "http://origin-2:15002"]\n')
    built = kconfig.build(AgentConfig, kconfig.load(str(path)))
    assert tuple(built.stream_from_origins) == ("http://origin-1:15002", "http://origin-2:15002")


def test_two_requests_that_open_at_once_share_one_stream(store: CAStore, tmp_path: Path) -> None:
    first, second = Response(200, len(DATA)), Response(200, len(DATA))
    answers: list[Deferred[Any]] = [Deferred(), Deferred()]

    class Slow(Origins):
        async def get(self, namespace: str, digest: Digest, *, method: str = "GET", headers: Any = None) -> Any:
            return await answers.pop(0)

    s = streams(store, tmp_path, Slow())
    pending = list(answers)
    a, b = Deferred.fromCoroutine(s.resource(NS, DIGEST)), Deferred.fromCoroutine(s.resource(NS, DIGEST))
    pending[0].callback(first)
    pending[1].callback(second)
    assert second.body.transport.stopped  # the second copy is dropped unread
    first.send(DATA)
    first.end()
    assert result_of(store.stat(DIGEST)) == len(DATA)
    for d in (a, b):
        result_of(d).blob.close()
