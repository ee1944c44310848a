"""Fakes of an ``HTTPClient`` for unit tests of our clients."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived


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
