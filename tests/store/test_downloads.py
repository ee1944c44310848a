"""DownloadArea: piece-by-piece downloads, verified, resumable, installed atomically."""

import errno
import os

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from kraken.core import Bitfield, MetaInfo, PieceLengthRule
from kraken.store import CAStore, PieceCorrupt
from kraken.workers import InlineWorker

PIECE = 16
DATA = bytes(range(256)) * 3  # 768 bytes: 48 pieces of 16
INFO = MetaInfo.from_bytes(DATA, PIECE)


def run(coro):
    out = []
    Deferred.fromCoroutine(coro).addBoth(out.append)
    assert out, "did not finish"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def store(root):
    clock = Clock()
    return CAStore(str(root), worker=InlineWorker(), piece_rule=PieceLengthRule(((0, PIECE),)), now=clock.seconds)


def piece(i):
    return DATA[i * PIECE : (i + 1) * PIECE]


def test_pieces_in_any_order_then_installed(tmp_path):
    s = store(tmp_path)
    partial = run(s.downloads.open(INFO))
    for i in reversed(range(INFO.num_pieces)):
        assert run(partial.write_piece(i, piece(i))) is True
    assert partial.complete()
    assert run(partial.read_piece(3)) == piece(3)
    run(s.downloads.finish(partial))
    assert run(s.stat(INFO.digest)) == len(DATA)
    assert run(s.metainfo(INFO.digest)) == INFO
    with open(s.blob_path(INFO.digest), "rb") as f:
        assert f.read() == DATA
    assert os.listdir(tmp_path / "downloads") == []


def test_a_corrupt_piece_is_refused_and_not_written(tmp_path):
    s = store(tmp_path)
    partial = run(s.downloads.open(INFO))
    with pytest.raises(PieceCorrupt):
        run(partial.write_piece(2, b"x" * PIECE))
    with pytest.raises(PieceCorrupt):
        run(partial.write_piece(2, piece(2)[:-1]))  # short
    assert not partial.have[2]
    with pytest.raises(KeyError):
        run(partial.read_piece(2))


def test_a_duplicate_piece_is_ignored(tmp_path):
    partial = run(store(tmp_path).downloads.open(INFO))
    assert run(partial.write_piece(0, piece(0))) is True
    assert run(partial.write_piece(0, piece(0))) is False
    assert partial.have.count() == 1


def test_restart_resumes_with_the_pieces_on_disk(tmp_path):
    partial = run(store(tmp_path).downloads.open(INFO))
    for i in (0, 5, 47):
        run(partial.write_piece(i, piece(i)))
    again = run(store(tmp_path).downloads.open(INFO))  # a new process
    assert sorted(again.have.ones()) == [0, 5, 47]
    assert run(again.read_piece(5)) == piece(5)


def test_a_partial_blob_of_other_metainfo_starts_afresh(tmp_path):
    partial = run(store(tmp_path).downloads.open(INFO))
    run(partial.write_piece(0, piece(0)))
    other = MetaInfo.from_bytes(DATA, 32)  # same blob, other piece length
    fresh = run(store(tmp_path).downloads.open(other))
    assert fresh.have.count() == 0
    assert fresh.metainfo == other


def test_unfinished_blob_cannot_be_installed_or_seen(tmp_path):
    s = store(tmp_path)
    partial = run(s.downloads.open(INFO))
    run(partial.write_piece(0, piece(0)))
    with pytest.raises(ValueError):
        run(s.downloads.finish(partial))
    assert run(s.stat(INFO.digest)) is None


def test_discard(tmp_path):
    s = store(tmp_path)
    partial = run(s.downloads.open(INFO))
    run(partial.write_piece(1, piece(1)))
    run(s.downloads.discard(INFO.digest))
    assert os.listdir(tmp_path / "downloads") == []
    assert run(s.downloads.open(INFO)).have.count() == 0


def test_open_twice_gives_the_same_partial_blob(tmp_path):
    s = store(tmp_path)
    assert run(s.downloads.open(INFO)) is run(s.downloads.open(INFO))


class ManualWorker:
    """Runs nothing until told: ``step()`` runs the oldest queued job."""

    def __init__(self):
        self.jobs = []

    def run(self, f, *args, **kwargs):
        d = Deferred()
        self.jobs.append((d, f, args, kwargs))
        return d

    def step(self):
        d, f, args, kwargs = self.jobs.pop(0)
        d.callback(f(*args, **kwargs))


def test_status_writes_are_coalesced_and_never_claim_an_unwritten_piece(tmp_path):
    from kraken.store.downloads import PartialBlob

    s = store(tmp_path)
    run(s.downloads.open(INFO))  # lays out the directory
    io = ManualWorker()
    partial = PartialBlob(str(tmp_path / "downloads" / INFO.digest.hex), INFO, Bitfield(INFO.num_pieces),
                          worker=io, hash_worker=InlineWorker())  # fmt: skip
    writes = [Deferred.fromCoroutine(partial.write_piece(i, piece(i))) for i in range(5)]
    # Piece 0's status write is running; pieces 1-4 landed meanwhile and wait for the next one.
    assert len(io.jobs) == 1 and not any(w.called for w in writes)
    io.step()
    assert writes[0].called and not writes[1].called
    assert len(io.jobs) == 1  # one write for the four
    io.step()
    assert all(w.called for w in writes)
    assert not io.jobs
    with open(tmp_path / "downloads" / INFO.digest.hex / "pieces", "rb") as f:
        assert list(Bitfield.from_bytes(INFO.num_pieces, f.read()).ones()) == [0, 1, 2, 3, 4]


def test_when_piece_fires_once_the_piece_is_written(tmp_path):
    partial = run(store(tmp_path).downloads.open(INFO))
    run(partial.write_piece(0, piece(0)))
    assert run(_awaited(partial.when_piece(0))) is None  # already there
    waiting, cancelled = partial.when_piece(5), partial.when_piece(5)
    seen = []
    waiting.addCallback(lambda _: seen.append(run(partial.read_piece(5))))
    cancelled.cancel()
    cancelled.addErrback(lambda f: None)
    with pytest.raises(PieceCorrupt):
        run(partial.write_piece(5, b"x" * PIECE))
    assert seen == [] and not waiting.called  # a corrupt copy wakes nobody
    run(partial.write_piece(5, piece(5)))
    assert seen == [piece(5)]
    with open(partial.data_path, "rb") as f:
        assert f.read()[5 * PIECE : 6 * PIECE] == piece(5)


async def _awaited(d):
    return await d


def test_a_new_download_reserves_its_length_and_a_full_disk_refuses_it_at_once(tmp_path, monkeypatch):
    s = store(tmp_path)
    run(s.downloads.open(INFO))
    data = tmp_path / "downloads" / INFO.digest.hex / "data"
    assert os.path.getsize(data) == len(DATA) and os.stat(data).st_blocks * 512 >= len(DATA)  # allocated, not sparse

    other = MetaInfo.from_bytes(DATA[::-1], PIECE)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("kraken.store.downloads.os.posix_fallocate", full)
    with pytest.raises(OSError) as caught:
        run(s.downloads.open(other))
    assert caught.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path / "downloads")) == [INFO.digest.hex]  # nothing left of the refused one


def test_where_space_cannot_be_reserved_the_data_file_is_sparse(tmp_path, monkeypatch):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr("kraken.store.downloads.os.posix_fallocate", unsupported)
    s = store(tmp_path)
    partial = run(s.downloads.open(INFO))
    assert os.path.getsize(tmp_path / "downloads" / INFO.digest.hex / "data") == len(DATA)
    assert run(partial.write_piece(0, piece(0))) is True
