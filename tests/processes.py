"""Child processes of the tests (the herd, moto_server, docker-registry, redis-server): their output
drained in a thread (``OutputReader``), which also lets a test wait for a line."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any


class OutputReader:
    """Drains a child's stdout in a thread: keeps every line, writes a log file if given, signals the ready line.

    The ready line is the first containing ``ready`` (a string) or matching it (a compiled regex; ``match`` then
    holds the match, e.g. the address the child printed). The thread keeps the pipe empty whatever the tests do
    with the main thread (a synchronous test blocking on skopeo must not stall the herd on a full pipe).
    """

    def __init__(self, stream: Any, log_path: str | None, ready: str | re.Pattern[str], name: str = "output") -> None:
        self._stream = stream
        self._log_path = log_path
        self._ready = ready
        self._lock = threading.Condition()
        self.lines: list[str] = []
        self.match: re.Match[str] | None = None
        self.ready = threading.Event()
        self.settled = threading.Event()  # ready, or the output ended
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _is_ready(self, line: str) -> bool:
        if isinstance(self._ready, str):
            return self._ready in line
        self.match = self._ready.search(line)
        return self.match is not None

    def _run(self) -> None:
        log = open(self._log_path, "w", encoding="utf-8", errors="replace") if self._log_path else None
        try:
            for raw in iter(self._stream.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                if log is not None:
                    log.write(line + "\n")
                    log.flush()
                with self._lock:
                    self.lines.append(line)
                    self._lock.notify_all()
                if not self.ready.is_set() and self._is_ready(line):
                    self.ready.set()
                    self.settled.set()
        finally:
            if log is not None:
                log.close()
        with self._lock:
            self.ended.set()
            self._lock.notify_all()
        self.settled.set()

    def snapshot(self, start: int = 0) -> list[str]:
        with self._lock:
            return self.lines[start:]

    def wait_for(self, done: Callable[[str], bool], start: int = 0, timeout: float = 60.0) -> bool:
        """Feed the lines from index ``start`` on, in order, to ``done`` (waiting for new ones) until it returns
        True; False when the output ends or after ``timeout`` seconds (a backstop)."""
        deadline = time.monotonic() + timeout
        position = start
        with self._lock:
            while True:
                while position < len(self.lines):
                    if done(self.lines[position]):
                        return True
                    position += 1
                remaining = deadline - time.monotonic()
                if self.ended.is_set() or remaining <= 0:
                    return False
                self._lock.wait(remaining)

    def count(self) -> int:
        with self._lock:
            return len(self.lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
