"""A full disk (ENOSPC) or quota (EDQUOT) in the store: the error comes out
at once, nothing half-written stays behind, and the next write after space
is freed works (no state is kept about it)."""

import errno
import hashlib
import io
import os

import pytest
from full_disk import FullDisk, Room, files_under, filling_open
from manual_worker import ManualWorker
from twisted.internet.defer import Deferred

from kraken.core import Digest, MetaInfo, PieceLengthRule
from kraken.files import OutOfSpace, errno_name, is_out_of_space
from kraken.store import CAStore, UploadArea, UploadUnknown
from kraken.store.spool import HIGH_WATER, BodySpool
from kraken.workers import InlineWorker

CODES = [errno.ENOSPC, errno.EDQUOT]


def result(d):
    """The outcome of a Deferred or coroutine that must have finished (a Failure if it failed)."""
    out = []
    (d if isinstance(d, Deferred) else Deferred.fromCoroutine(d)).addBoth(out.append)
    assert out, "not finished"
    return out[0]


def raised(d):
    out = result(d)
    assert hasattr(out, "value"), f"did not fail: {out!r}"
    return out.value


def store(tmp_path, worker=None):
    return CAStore(
        str(tmp_path), worker=worker or InlineWorker(), piece_rule=PieceLengthRule(((0, 1024),)), now=lambda: 1000.0
    )


# -- the test itself ----------------------------------------------------------------


@pytest.mark.parametrize("code", CODES)
def test_enospc_and_edquot_are_out_of_space(code):
    assert is_out_of_space(OSError(code, "x"))
    assert is_out_of_space(OutOfSpace("a blob", OSError(code, "x")))
    assert OutOfSpace("a blob", OSError(code, "x")).errno == code
    assert str(OutOfSpace("a blob")) == "no space left on device: a blob"
    assert errno_name(OSError(code, "x")) == errno.errorcode[code]


def test_other_errors_are_not():
    assert not is_out_of_space(OSError(errno.EIO, "x"))
    assert not is_out_of_space(OSError(errno.EFBIG, "file too large"))  # RLIMIT_FSIZE: not the same
    assert not is_out_of_space(ValueError("x"))
    assert not is_out_of_space(None)


# -- the spool ------------------------------------------------------------------------


@pytest.mark.parametrize("code", CODES)
def test_a_spool_that_fills_the_disk_while_paused_tells_at_once_and_deletes_its_file(tmp_path, code):
    worker = ManualWorker()
    events, errors = [], []
    s = BodySpool(
        str(tmp_path),
        worker,
        pause=lambda: events.append("pause"),
        resume=lambda: events.append("resume"),
        error=errors.append,
    )
    s._file = filling_open(Room(100_000, code))(s.path, "w+b")
    chunk = b"x" * (1 << 20)
    for _ in range(HIGH_WATER // len(chunk) + 2):
        s.write(chunk)
    assert events == ["pause"]
    worker.step()  # the batch meets the full disk
    assert len(errors) == 1 and errors[0].value.errno == code
    assert not os.path.exists(s.path), "the half-written file is deleted at once, not when the request ends"
    assert os.listdir(tmp_path) == []
    assert events == ["pause"], "never resumed: the request answers and closes instead"
    s.write(chunk)  # the client is still sending: dropped
    assert worker.jobs == []
    assert s.tell() == s.size
    assert raised(s.done_receiving()).errno == code
    with pytest.raises(OSError):
        s.read()
    s.close()  # twisted.web closes it again when the request ends: harmless
    assert len(errors) == 1


# -- the upload area ---------------------------------------------------------------------


@pytest.mark.parametrize("code", CODES)
def test_an_append_that_fills_the_disk_deletes_the_upload(tmp_path, monkeypatch, code):
    import kraken.store.uploads as uploads_module

    area = UploadArea(str(tmp_path / "uploads"), InlineWorker())
    uid = result(area.create())
    monkeypatch.setattr(uploads_module, "open", filling_open(Room(5000, code)), raising=False)
    error = raised(area.append(uid, io.BytesIO(b"a" * 20000)))
    assert is_out_of_space(error) and error.errno == code
    assert files_under(tmp_path / "uploads") == [], "neither the half-written nor an empty upload file stays"
    with pytest.raises(UploadUnknown):
        area.size(uid)
    # Space is back: uploads work again at once.
    monkeypatch.undo()
    again = result(area.create())
    assert result(area.append(again, io.BytesIO(b"b" * 20000))) == 20000
    assert result(area.digest(again)) == Digest(hashlib.sha256(b"b" * 20000).hexdigest())


# -- the cache ---------------------------------------------------------------------------


def test_a_commit_that_fills_the_disk_leaves_nothing_and_the_next_one_works(tmp_path, monkeypatch):
    import kraken.store.cas as cas_module

    s = store(tmp_path)
    data = os.urandom(5000)
    digest = Digest(hashlib.sha256(data).hexdigest())
    uid = result(s.uploads.create())
    result(s.uploads.append(uid, io.BytesIO(data)))
    monkeypatch.setattr(cas_module, "open", filling_open(Room(10)), raising=False)  # the metainfo does not fit
    assert is_out_of_space(raised(s.commit(uid, digest)))
    assert files_under(tmp_path) == []
    assert result(s.stat(digest)) is None
    with pytest.raises(UploadUnknown):
        s.uploads.size(uid)
    monkeypatch.undo()
    uid = result(s.uploads.create())
    result(s.uploads.append(uid, io.BytesIO(data)))
    assert result(s.commit(uid, digest)).created
    assert result(s.stat(digest)) == len(data)


def test_recording_an_access_on_a_full_disk_is_not_an_error(tmp_path, monkeypatch):
    import kraken.store.cas as cas_module

    s = store(tmp_path)
    data = b"served while the disk is full"
    digest = Digest(hashlib.sha256(data).hexdigest())
    uid = result(s.uploads.create())
    result(s.uploads.append(uid, io.BytesIO(data)))
    result(s.commit(uid, digest))
    before = files_under(tmp_path)
    monkeypatch.setattr(cas_module, "open", filling_open(Room(0)), raising=False)
    assert result(s.touch(digest)) is None
    assert files_under(tmp_path) == before, "no temporary access file left"


# -- downloads -------------------------------------------------------------------------------


def test_opening_a_download_on_a_full_disk_leaves_no_directory(tmp_path, monkeypatch):
    import kraken.store.downloads as downloads_module

    s = store(tmp_path)
    data = os.urandom(4096)
    info = _metainfo(data, 1024)
    monkeypatch.setattr(downloads_module, "open", filling_open(Room(0)), raising=False)
    assert is_out_of_space(raised(s.downloads.open(info)))
    assert files_under(tmp_path / "downloads") == []
    assert os.listdir(tmp_path / "downloads") == []
    monkeypatch.undo()
    partial = result(s.downloads.open(info))
    assert partial.have.count() == 0


def test_a_piece_status_that_does_not_fit_leaves_no_temporary_file(tmp_path, monkeypatch):
    import kraken.store.downloads as downloads_module

    s = store(tmp_path)
    data = os.urandom(4096)
    info = _metainfo(data, 1024)
    partial = result(s.downloads.open(info))
    monkeypatch.setattr(downloads_module, "open", filling_open(Room(0)), raising=False)
    assert is_out_of_space(raised(partial.write_piece(0, data[:1024])))
    assert sorted(os.listdir(tmp_path / "downloads" / info.digest.hex)) == ["data", "metainfo", "pieces"]
    result(s.downloads.discard(info.digest))
    assert os.listdir(tmp_path / "downloads") == []


def test_a_piece_write_on_a_full_disk_fails_with_the_error(tmp_path):
    disk = FullDisk("_check_and_write")
    s = CAStore(
        str(tmp_path),
        worker=InlineWorker(),
        hash_worker=disk,
        piece_rule=PieceLengthRule(((0, 1024),)),
        now=lambda: 1000.0,
    )
    data = os.urandom(4096)
    info = _metainfo(data, 1024)
    partial = result(s.downloads.open(info))
    assert is_out_of_space(raised(partial.write_piece(1, data[1024:2048])))
    assert partial.have.count() == 0
    disk.free()
    assert result(partial.write_piece(1, data[1024:2048])) is True


def _metainfo(data, piece_length):
    sums = tuple(hashlib.sha256(data[i : i + piece_length]).digest() for i in range(0, len(data), piece_length))
    return MetaInfo(
        digest=Digest(hashlib.sha256(data).hexdigest()), length=len(data), piece_length=piece_length, piece_sums=sums
    )
