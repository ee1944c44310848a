"""``BodyPipe``: a response body passed on as a request body, with back-pressure from the upload,
pacing by a token bucket, and every way it can end (done, short, broken, stalled, stopped, dropped)."""

from __future__ import annotations

from typing import Any

import pytest
from stream_fakes import Collector, FakeResponse, produce
from twisted.internet.error import ConnectionLost, TimeoutError
from twisted.internet.task import Clock

from kraken.buildindex.pipe import BodyPipe, PipeBroken
from kraken.throttle import TokenBucket, Unlimited


def failure_of(d: Any) -> BaseException:
    found: list[BaseException] = []
    d.addErrback(lambda f: found.append(f.value))
    assert found, "the Deferred did not fail"
    return found[0]


def test_the_body_passes_through_and_the_result_fires_at_its_end() -> None:
    clock = Clock()
    response = FakeResponse(b"x" * 10)
    pipe = BodyPipe(response, Unlimited(), clock, 30.0)
    consumer = Collector()
    done = produce(pipe, consumer)
    response.feed(b"x" * 4)
    response.feed(b"x" * 6)
    assert not done.called
    response.end()
    assert done.called and done.result is None
    assert consumer.data == b"x" * 10 and pipe.sent == pipe.length == 10
    assert not clock.getDelayedCalls()


def test_the_uploads_back_pressure_pauses_the_response() -> None:
    clock = Clock()
    response = FakeResponse(b"y" * 8)
    pipe = BodyPipe(response, Unlimited(), clock, 30.0)
    consumer = Collector(pause_after=4)
    done = produce(pipe, consumer)
    response.feed(b"y" * 4)
    assert response.transport.paused and not clock.getDelayedCalls()  # no stall timer while paused by us
    clock.advance(100)
    assert not done.called
    pipe.resumeProducing()
    assert not response.transport.paused
    response.feed(b"y" * 4)
    response.end()
    assert done.called and consumer.data == b"y" * 8


def test_the_rate_paces_the_response() -> None:
    clock = Clock()
    response = FakeResponse(b"z" * 300)
    pipe = BodyPipe(response, TokenBucket(100.0, 100.0, clock=clock), clock, 30.0)
    done = produce(pipe, Collector())
    response.feed(b"z" * 100)  # the burst
    assert not response.transport.paused
    response.feed(b"z" * 100)  # over it: held until a second has passed
    assert response.transport.paused
    clock.advance(0.5)
    assert response.transport.paused
    clock.advance(0.5)
    assert not response.transport.paused
    response.feed(b"z" * 100)
    assert response.transport.paused
    clock.advance(1.0)
    response.end()
    assert done.called and done.result is None


@pytest.mark.parametrize(
    "ending, error",
    [(None, PipeBroken), (ConnectionLost("origin went away"), PipeBroken)],
)
def test_a_short_or_broken_body_fails(ending: BaseException | None, error: type[BaseException]) -> None:
    clock = Clock()
    response = FakeResponse(b"a" * 10)
    done = produce(BodyPipe(response, Unlimited(), clock, 30.0), Collector())
    response.feed(b"a" * 3)
    response.end(ending)
    assert isinstance(failure_of(done), error)
    assert not clock.getDelayedCalls()


def test_a_stalled_body_fails_after_the_timeout_and_stops_the_response() -> None:
    clock = Clock()
    response = FakeResponse(b"b" * 10)
    done = produce(BodyPipe(response, Unlimited(), clock, 30.0), Collector())
    response.feed(b"b")
    clock.advance(29)
    response.feed(b"b")  # progress restarts the timer
    clock.advance(29)
    assert not done.called
    clock.advance(1)
    assert isinstance(failure_of(done), TimeoutError) and response.transport.stopped


def test_stopping_the_upload_stops_the_response_and_a_waiting_reservation() -> None:
    clock = Clock()
    response = FakeResponse(b"c" * 300)
    bucket = TokenBucket(100.0, 100.0, clock=clock)
    pipe = BodyPipe(response, bucket, clock, 30.0)
    done = produce(pipe, Collector())
    response.feed(b"c" * 200)
    pipe.stopProducing()
    assert response.transport.stopped and not done.called
    response.end(ConnectionLost())
    assert not done.called and not clock.getDelayedCalls()


def test_closing_a_pipe_never_started_drops_the_response() -> None:
    response = FakeResponse(b"d" * 10)
    BodyPipe(response, Unlimited(), Clock(), 30.0).close()
    assert response.transport.stopped


def test_a_response_of_unknown_length_is_refused() -> None:
    from twisted.web.iweb import UNKNOWN_LENGTH

    with pytest.raises(ValueError):
        BodyPipe(FakeResponse(b"", length=UNKNOWN_LENGTH), Unlimited(), Clock(), 30.0)
