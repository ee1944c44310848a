"""Fakes of an ``HTTPClient`` for unit tests of our clients."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import Request


class Hanging:
    """An HTTPClient whose requests never answer; cancelling one fails it the
    way treq does mid-flight (ResponseNeverReceived), not with CancelledError."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.pending: list[Deferred[Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        self.sent.append((method, url))

        def cancel(d: Deferred[Any]) -> None:
            d.errback(Failure(ResponseNeverReceived([Failure(CancelledError())])))

        d: Deferred[Any] = Deferred(cancel)
        self.pending.append(d)
        d.addBoth(self._settled, d)
        return d

    def _settled(self, result: Any, d: Deferred[Any]) -> Any:
        self.pending.remove(d)
        return result


class Canned(Resource):
    """Answers every request with ``code`` and ``body``; counts them."""

    isLeaf = True

    def __init__(self, code: int, body: bytes) -> None:
        super().__init__()
        self.code, self.body, self.seen = code, body, 0

    def render(self, request: Request) -> bytes:
        self.seen += 1
        request.setResponseCode(self.code)
        return self.body
