"""htpasswd files with bcrypt entries, as docker-registry reads them (HTTP Basic).

One ``user:hash`` per line; blank lines and lines starting with ``#`` are
skipped; every hash must be bcrypt (``$2y$``, ``$2b$`` or ``$2a$``, what
``htpasswd -B`` writes): distribution refuses other schemes too, and so do we
(at start, as a config error naming the file and the line).

``HtpasswdFile.check`` is blocking (it may stat and re-read the file, and
bcrypt is slow on purpose), so the registry runs it in a ``Worker``. The file
is re-read when its modification time, size or inode change, and on SIGHUP
(``reload``); a file that has become unreadable or malformed keeps the
previous entries and says so in the log, once per change. A successful check is remembered (by a SHA-256 of the
password, for as long as the user's entry is unchanged) so that a client
sending its credentials on every request costs one bcrypt, not one each.
"""

from __future__ import annotations

import hashlib
import os
import threading

import bcrypt
from twisted.logger import Logger

BCRYPT_PREFIXES = (b"$2y$", b"$2b$", b"$2a$")
#: Remembered successful checks; forgotten all at once when full.
MAX_REMEMBERED = 1024

log = Logger(namespace="kraken.registry.auth")


def parse_htpasswd(text: str, path: str) -> dict[str, bytes]:
    """``{user: bcrypt hash}`` of an htpasswd file's ``text``; ValueError
    naming ``path`` and the line for anything else."""
    entries: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        where = f"{path}: line {number}"
        if not sep or not user or not hashed:
            raise ValueError(f"{where}: not a 'user:hash' entry")
        encoded = hashed.encode("ascii", "replace")
        if not encoded.startswith(BCRYPT_PREFIXES) or len(encoded) != 60:
            raise ValueError(f"{where}: user {user!r} has no bcrypt hash (create entries with 'htpasswd -B')")
        if user in entries:
            raise ValueError(f"{where}: user {user!r} appears twice")
        entries[user] = encoded
    return entries


def read_htpasswd(path: str) -> dict[str, bytes]:
    """Read and parse ``path``; ValueError naming it when it cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    return parse_htpasswd(text, path)


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class HtpasswdFile:
    """The users of one htpasswd file, re-read when it changes (``check`` is blocking)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._signature = _signature(path)
        self._entries = read_htpasswd(path)
        self._remembered: dict[tuple[str, bytes], bytes] = {}
        self._lock = threading.Lock()

    def check(self, user: str, password: str) -> bool:
        """Whether ``password`` is ``user``'s (blocking: run it in a worker)."""
        self._reload_if_changed()
        hashed = self._entries.get(user)
        if hashed is None:
            return False
        key = (user, hashlib.sha256(password.encode("utf-8")).digest())
        if self._remembered.get(key) == hashed:
            return True
        try:
            ok = bcrypt.checkpw(password.encode("utf-8"), hashed)
        except ValueError:  # longer than bcrypt's 72 bytes, or a hash bcrypt cannot read
            ok = False
        if ok:
            if len(self._remembered) >= MAX_REMEMBERED:
                self._remembered.clear()
            self._remembered[key] = hashed
        return ok

    def _reload_if_changed(self) -> None:
        signature = _signature(self.path)
        if signature == self._signature:
            return
        with self._lock:
            if signature == self._signature:
                return
            self._signature = signature
            self._read()

    def reload(self) -> bool:
        """Read the file again whether or not it looks changed (SIGHUP); False when it failed (logged,
        the previous users kept)."""
        with self._lock:
            self._signature = _signature(self.path)
            return self._read()

    def _read(self) -> bool:
        try:
            entries = read_htpasswd(self.path)
        except ValueError as e:
            log.error(
                "htpasswd file not reloaded, keeping its {count} previous users: {why}",
                count=len(self._entries),
                why=str(e),
            )
            return False
        self._entries = entries
        self._remembered = {}
        log.info("htpasswd file {path} reloaded: {count} users", path=self.path, count=len(entries))
        return True
