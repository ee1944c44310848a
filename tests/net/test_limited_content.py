"""limited_content on bodies that arrive before or after collection starts."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH

from kraken.net import ResponseTooLarge, limited_content


class FakeResponse:
    """Delivers ``early`` chunks synchronously inside deliverBody (as twisted's
    client does with data that came before the caller asked for the body)."""

    length = UNKNOWN_LENGTH

    def __init__(self, early: list[bytes], finish_early: bool = True) -> None:
        self.early = early
        self.finish_early = finish_early
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)
        for chunk in self.early:
            protocol.dataReceived(chunk)
        if self.finish_early:
            protocol.connectionLost(Failure(ResponseDone()))

    def loseConnection(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def outcome(d: Deferred[Any] | Any) -> Any:
    d = Deferred.fromCoroutine(d) if not isinstance(d, Deferred) else d
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def test_body_delivered_synchronously() -> None:
    clock = Clock()
    [body] = outcome(limited_content(FakeResponse([b"abc", b"def"]), clock, 100, 5.0))
    assert body == b"abcdef"
    assert clock.getDelayedCalls() == []


def test_too_large_synchronously() -> None:
    clock = Clock()
    [failure] = outcome(limited_content(FakeResponse([b"x" * 60, b"y" * 60]), clock, 100, 5.0))
    assert isinstance(failure, Failure) and failure.check(ResponseTooLarge)
    assert clock.getDelayedCalls() == []


def test_silence_timeout_resets_on_data() -> None:
    clock = Clock()
    response = FakeResponse([b"a"], finish_early=False)
    out = outcome(limited_content(response, clock, 100, 5.0))
    clock.advance(4)
    response.protocol.dataReceived(b"b")
    clock.advance(4)
    assert out == []
    response.protocol.connectionLost(Failure(ResponseDone()))
    assert out == [b"ab"]
    assert clock.getDelayedCalls() == []


def test_silence_timeout_fires() -> None:
    clock = Clock()
    response = FakeResponse([], finish_early=False)
    out = outcome(limited_content(response, clock, 100, 5.0))
    clock.advance(5)
    assert len(out) == 1 and isinstance(out[0], Failure)
    with pytest.raises(Exception):  # noqa: B017 - cancellation surfaces as CancelledError or ResponseFailed
        out[0].raiseException()
