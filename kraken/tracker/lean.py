"""A lean HTTP/1.1 path for ``POST /announce``, in front of twisted.web on the tracker's listener.

twisted.web's work per request (a ``Request`` object, its header objects, the line parser, the
resource walk, the access-log hook) was the largest share of an announce's CPU. ``LeanChannel`` is
the Site's channel (a ``PlainHTTPChannel``) with a parser of its own for the one request it is sure
of: ``POST /announce HTTP/1.1`` with a ``Content-Length`` of at most ``MAX_ANNOUNCE_BODY``, header
names that are tokens and values without control characters, no ``Transfer-Encoding``, ``Expect``
or ``Upgrade``, no ``Connection`` other than ``keep-alive``, at most ``MAX_HEAD`` bytes of head, and
a body that parses as an announce. It answers such a request itself, with the same bytes twisted.web
would write (status line, ``Server``, ``Date``, ``Content-Type``, ``Content-Length``, the answer's
JSON), counts it in ``kraken_http_requests_total{route="/announce"}`` as ``Observed`` does, and reads
the next request on the same connection (pipelined requests are answered in order).

Everything else, and anything it does not fully understand, goes to twisted.web unchanged: the bytes
it held are handed to the ordinary channel from the first byte of that request, and the connection
stays with twisted.web until it has finished every request and holds no partial one; then the lean
parser takes over again. So every other route, an announce with a bad body (its 4xx), a chunked or
oversized one (413), ``Expect: 100-continue``, HTTP/1.0 and ``Connection: close`` are answered
exactly as before. TLS and the client-certificate check sit below the channel, as before.

The access log needs twisted.web's ``Request`` objects: with ``access_log`` on, the tracker does not
use this path (``lean_announces`` is not applied).
"""

from __future__ import annotations

import re
import time
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, datetimeToString
from twisted.web.iweb import IRequest
from twisted.web.server import Site, version

from kraken.net.metrics import RequestCounts
from kraken.net.server import PlainHTTPChannel, json_error
from kraken.tracker.fair import source_key
from kraken.tracker.http import MAX_ANNOUNCE_BODY, TrackerHTTP, parse_announce_and_progress

#: The most bytes of request line and headers the lean parser reads (twisted.web's ``totalHeadersSize``).
MAX_HEAD = 16384
_REQUEST_LINE = b"POST /announce HTTP/1.1\r\n"
#: The head of a request the lean path may answer: the request line, then header lines whose names are
#: tokens and whose values hold no control characters (no folded lines).
_HEAD = re.compile(rb"POST /announce HTTP/1\.1(?:\r\n[-!#$%&'*+.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*)*")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)[ \t]*(?=\r\n|\Z)")
_CONNECTION = re.compile(rb"\r\nconnection:([^\r]*)")
#: Headers that change how a request is read or answered: such a request goes to twisted.web.
_NOT_OURS = (b"\r\ntransfer-encoding:", b"\r\nexpect:", b"\r\nupgrade:")
_SERVER = b"Server: " + version + b"\r\n"


#: Heads (of at most ``MEMO_HEAD_BYTES``) seen lately and their ``body_length``: a client sends the same head
#: with every announce. At most ``HEAD_MEMO_SIZE``; when full, the memo starts afresh.
_HEADS: dict[bytes, int | None] = {}
HEAD_MEMO_SIZE = 4096
MEMO_HEAD_BYTES = 1024


def body_length(head: bytes) -> int | None:
    """The body length of ``head`` (a request's head without its blank line) if the lean path may answer
    it, else None."""
    try:
        return _HEADS[head]
    except KeyError:
        pass
    length = _body_length(head)
    if len(head) <= MEMO_HEAD_BYTES:
        if len(_HEADS) >= HEAD_MEMO_SIZE:
            _HEADS.clear()
        _HEADS[head] = length
    return length


def _body_length(head: bytes) -> int | None:
    if len(head) > MAX_HEAD or _HEAD.fullmatch(head) is None:
        return None
    lower = head.lower()
    for name in _NOT_OURS:
        if name in lower:
            return None
    lengths = _CONTENT_LENGTH.findall(lower)
    if len(lengths) != 1 or lower.count(b"\r\ncontent-length:") != 1:
        return None
    if b"\r\nconnection:" in lower:
        for value in _CONNECTION.findall(lower):
            if value.strip(b" \t") != b"keep-alive":
                return None
    length = int(lengths[0])
    return length if length <= MAX_ANNOUNCE_BODY else None


class _ErrorAnswer:
    """What ``json_error`` needs of a request, to build the lean path's error answers with it."""

    method = b"POST"
    path = b"/announce"

    def __init__(self) -> None:
        self.code = 200
        self.headers: list[tuple[bytes, bytes]] = []

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


class LeanAnnounces:
    """What a ``LeanChannel`` answers with: the tracker, and where its announces are counted (None: not)."""

    def __init__(self, tracker: TrackerHTTP, requests: RequestCounts | None) -> None:
        self.tracker = tracker
        self.requests = requests
        self.answered = 0  # announces answered on the lean path (tests, benchmarks)
        self._second = -1
        self._date = b""

    def date(self) -> bytes:
        """The ``Date`` header line, made once a second."""
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._date = b"Date: " + datetimeToString(now) + b"\r\n"
        return self._date

    def response(self, result: bytes | Failure) -> bytes:
        """The whole HTTP/1.1 response for an announce's answer or failure (counted)."""
        if isinstance(result, Failure):
            answer = _ErrorAnswer()
            body = json_error(cast(IRequest, answer), result, self.tracker.log)
            code, headers = answer.code, b"".join(b"%s: %s\r\n" % h for h in answer.headers)
        else:
            code, body, headers = 200, result, b"Content-Type: application/json\r\n"
        if self.requests is not None:
            self.requests.add("/announce", b"POST", code)
        self.answered += 1
        status = b"HTTP/1.1 200 OK\r\n" if code == 200 else b"HTTP/1.1 %d %s\r\n" % (code, RESPONSES.get(code, b""))
        return b"%s%s%s%sContent-Length: %d\r\n\r\n%s" % (status, _SERVER, self.date(), headers, len(body), body)


class LeanChannel(PlainHTTPChannel):
    """The tracker's channel: announces it is sure of answered on the lean path, the rest by twisted.web."""

    _held = b""  # bytes of the lean path's next request(s), not yet answered
    _twisted = False  # twisted.web has the connection until it is idle again
    _waiting: Deferred[bytes] | None = None  # an announce answered later (the peer store awaited I/O)
    site: Any  # set by Site.buildProtocol; ``lean_announces`` set on it by ``lean_announces``
    _paused = False
    _gone = False
    _saved_timeout: Any = None
    _source_key: str | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._twisted and not self._idle():
            super().dataReceived(data)
            return
        self._twisted = False
        if self._waiting is not None:
            self._held += data
            if len(self._held) > MAX_HEAD and not self._paused:
                self._paused = True
                self._networkProducer.pauseProducing()
            return
        self.resetTimeout()
        self._serve(self._held + data if self._held else data)

    def _serve(self, data: bytes) -> None:
        lean: LeanAnnounces = self.site.lean_announces
        while data:
            end = data.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
            if end < 0:
                if len(data) > MAX_HEAD or not _REQUEST_LINE.startswith(data[:25]):
                    self._to_twisted(data)
                else:
                    self._held = data
                return
            length = body_length(data[:end])
            if length is None:
                self._to_twisted(data)
                return
            total = end + 4 + length
            if len(data) < total:
                self._held = data
                return
            try:
                announce, progress = parse_announce_and_progress(data[end + 4 : total])
            except Exception:  # a bad body: twisted.web answers it (and its 4xx) as ever
                self._to_twisted(data)
                return
            self._first = False
            data = data[total:]
            answer: bytes | Failure | Deferred[bytes]
            try:
                answer = lean.tracker.answer(announce, progress, self._source())
            except Exception:
                answer = Failure()
            if isinstance(answer, Deferred):
                result: list[bytes | Failure] = []
                answer.addBoth(result.append)
                if not result:
                    self._wait(answer, result, data)
                    return
                answer = result[0]
            self.transport.write(lean.response(answer))  # type: ignore[union-attr]
        self._held = b""

    def _source(self) -> str:
        """The announcing address's group (``kraken.tracker.fair.source_key``), found once per connection."""
        source = self._source_key
        if source is None:
            source = self._source_key = source_key(getattr(self.transport.getPeer(), "host", None))  # type: ignore[union-attr]
        return source

    def _to_twisted(self, data: bytes) -> None:
        """Hand ``data`` (from the first byte of a request on) to twisted.web, which keeps the connection
        until it is idle."""
        self._held = b""
        self._twisted = True
        super().dataReceived(data)

    def _idle(self) -> bool:
        """twisted.web has answered every request it read and holds no part of another."""
        return bool(
            not self.requests
            and not self._handlingRequest
            and self.line_mode
            and not self._buffer
            and self._receivedHeaderSize == 0
            and self._transferDecoder is None
            and bool(self.persistent)
            and not self._draining
            and not getattr(self.transport, "disconnecting", False)
        )

    def _wait(self, answer: Deferred[Any], result: list[bytes | Failure], rest: bytes) -> None:
        """The announce's answer comes later (into ``result``): hold what follows it until it is written."""
        self._waiting = answer
        self._held = rest
        self._saved_timeout = self.setTimeout(None)  # as twisted.web does while it answers
        answer.addCallback(lambda _: self._answered(result[0]))

    def _answered(self, result: bytes | Failure) -> None:
        self._waiting = None
        if self._gone or self.transport is None:
            if isinstance(result, Failure) and not result.check(CancelledError):
                self.site.lean_announces.tracker.log.failure("announce failed after its client went away", result)
            return
        self.transport.write(self.site.lean_announces.response(result))
        self.setTimeout(self._saved_timeout)
        if self._paused:
            self._paused = False
            self._networkProducer.resumeProducing()
        held, self._held = self._held, b""
        if held:
            self.dataReceived(held)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]  # twisted.web is unannotated
        self._gone = True
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()
        super().connectionLost(reason)


def lean_announces(site: Site, tracker: TrackerHTTP, requests: RequestCounts | None) -> Site:
    """``site`` (the tracker's, from ``make_site``, without the access log) with ``POST /announce`` answered
    on the lean path; ``requests`` is where announces are counted (``Observation.requests``), None for not."""
    site.protocol = LeanChannel  # type: ignore[method-assign,assignment]  # the channel class Site builds
    site.lean_announces = LeanAnnounces(tracker, requests)  # type: ignore[attr-defined]
    return site
