"""An HTTP client for the tests of clients of several servers: each base URL routed to its own StubTreq."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError


class Routed:
    """``request`` goes to the StubTreq of the URL's base (``scheme://host:port``); a base in ``dead`` refuses
    the connection, as a killed server does. ``asked`` lists the bases asked, in order."""

    def __init__(self, stubs: dict[str, StubTreq]) -> None:
        self.stubs = stubs
        self.dead: set[str] = set()
        self.asked: list[str] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        parts = urlsplit(url)
        base = f"{parts.scheme}://{parts.netloc}"
        self.asked.append(base)
        if base in self.dead:
            return fail(ConnectionRefusedError(f"{base} is down"))
        result: Deferred[Any] = self.stubs[base].request(method, url, **kwargs)
        return result

    def flush(self) -> None:
        for stub in self.stubs.values():
            stub.flush()
