"""htpasswd files (``kraken.registry.htpasswd``): bcrypt entries only, errors naming file and line,
re-read when the file changes, one bcrypt per (user, password) while the entry stays."""

from __future__ import annotations

import os
from pathlib import Path

import bcrypt
import pytest
from twisted.logger import capturedLogs

from kraken.registry import htpasswd
from kraken.registry.htpasswd import HtpasswdFile, parse_htpasswd, read_htpasswd


def entry(user: str, password: str, prefix: bytes = b"$2y$") -> str:
    """A line as ``htpasswd -nbB user password`` writes it (``$2y$``, cost 5)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(5))
    return f"{user}:{(prefix + hashed[4:]).decode()}\n"


def test_parse_skips_comments_and_blank_lines() -> None:
    text = "# users\n\n" + entry("alice", "a") + "  " + entry("bob", "b", b"$2b$")
    assert sorted(parse_htpasswd(text, "f")) == ["alice", "bob"]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("alice\n", "line 2: not a 'user:hash' entry"),
        (":$2y$05$abc\n", "line 2: not a 'user:hash' entry"),
        ("alice:$apr1$xyz$abcdefghijklmnopqrstuv\n", "line 2: user 'alice' has no bcrypt hash"),
        ("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n", "line 2: user 'alice' has no bcrypt hash"),
        ("alice:$2y$05$short\n", "line 2: user 'alice' has no bcrypt hash"),
    ],
)
def test_malformed_entries_name_file_and_line(line: str, why: str) -> None:
    with pytest.raises(ValueError, match=f"^/etc/users: {why.replace('$', '[$]')}"):
        parse_htpasswd("# first\n" + line, "/etc/users")


def test_a_user_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="line 2: user 'alice' appears twice"):
        parse_htpasswd(entry("alice", "a") + entry("alice", "b"), "f")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"{tmp_path}/missing: cannot read: No such file"):
        read_htpasswd(str(tmp_path / "missing"))
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_htpasswd(str(tmp_path / "binary"))


def test_check(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(entry("alice", "s3cret") + entry("bob", "x" * 72))
    users = HtpasswdFile(str(path))
    assert users.check("alice", "s3cret")
    assert not users.check("alice", "wrong")
    assert not users.check("carol", "s3cret")
    assert users.check("bob", "x" * 72)
    assert not users.check("bob", "x" * 73), "bcrypt 5 refuses passwords over 72 bytes: never a match"


def test_a_right_password_is_checked_by_bcrypt_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(entry("alice", "s3cret"))
    users = HtpasswdFile(str(path))
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(htpasswd.bcrypt, "checkpw", lambda p, h: calls.append(p) or real(p, h))
    assert all(users.check("alice", "s3cret") for _ in range(5))
    assert not users.check("alice", "wrong") and not users.check("alice", "wrong")
    assert calls == [b"s3cret", b"wrong", b"wrong"], "wrong passwords are never remembered"


def test_the_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(entry("alice", "one"))
    users = HtpasswdFile(str(path))
    assert users.check("alice", "one")
    with capturedLogs() as events:
        path.write_text(entry("alice", "two") + entry("bob", "three"))
        assert users.check("alice", "two") and not users.check("alice", "one"), "the remembered check is dropped"
        assert users.check("bob", "three")
        path.write_text("alice:plaintext\n")
        os.utime(path, ns=(1, 1))
        assert users.check("alice", "two"), "a malformed file keeps the previous users"
        path.unlink()
        assert users.check("bob", "three"), "so does a missing one"
    messages = [e["log_format"] for e in events]
    assert messages.count("htpasswd file {path} reloaded: {count} users") == 1
    errors = [e for e in events if e["log_format"].startswith("htpasswd file not reloaded")]
    assert len(errors) == 2, "each change is reported once"
    assert "line 1: user 'alice' has no bcrypt hash" in errors[0]["why"]
