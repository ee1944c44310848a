"""bench/tracker_load.py's own logic: the Python generator's response parser and closed loop, the nearest-rank
percentile, wrk's RESULT line, and the announces both generators send (which the tracker must accept)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re

import pytest
import tracker_load
from tracker_load import (
    NAMESPACE,
    PEER_PORT,
    ResponseParser,
    announce_bodies,
    announce_body,
    announce_request,
    generate,
    parse_wrk,
    peer_ip,
    percentile,
    wrk_script,
)
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web import resource, server

from kraken.tracker.http import parse_announce

# -- ResponseParser --

CL_OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"peers": []}'
CL_ERROR = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\nnope\n"
CHUNKED_OK = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"
    b"5\r\nhello\r\n"
    b"a;name=value\r\n0123456789\r\n"  # a chunk extension
    b"0\r\n\r\n"
)
NO_BODY = b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n"


def feed_split(stream: bytes, *cuts: int) -> list[int]:
    """The statuses a fresh parser yields for ``stream`` fed in pieces cut at ``cuts``."""
    parser = ResponseParser()
    statuses: list[int] = []
    edges = [0, *cuts, len(stream)]
    for start, end in itertools.pairwise(edges):
        statuses += parser.feed(stream[start:end])
    return statuses


@pytest.mark.parametrize(
    "responses",
    [[CL_OK], [CHUNKED_OK], [NO_BODY], [CL_OK, CHUNKED_OK, CL_ERROR, NO_BODY, CHUNKED_OK, CL_OK]],
    ids=["content-length", "chunked", "no-body", "pipelined"],
)
def test_responses_split_at_every_offset(responses):
    stream = b"".join(responses)
    statuses = [int(r.split(b" ")[1]) for r in responses]
    assert feed_split(stream) == statuses
    for cut in range(len(stream) + 1):
        assert feed_split(stream, cut) == statuses, cut
    assert feed_split(stream, *range(1, len(stream))) == statuses  # a byte at a time


def test_a_response_counts_only_once_its_body_is_complete():
    for response in (CL_OK, CHUNKED_OK):
        parser = ResponseParser()
        assert parser.feed(response[:-1]) == []
        assert parser.feed(response[-1:]) == [200]
        assert parser.feed(b"") == []


def test_a_chunk_longer_than_what_has_arrived_waits():
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789") == []
    # 0x10 = 16 bytes: the "0" after the tenth is data, not the last chunk.
    assert parser.feed(b"abcdef\r\n0\r\n\r\nHTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n") == [200, 503]


def test_not_a_response():
    with pytest.raises(ValueError, match="not an HTTP response"):
        ResponseParser().feed(b"<html>\r\n\r\n")
    with pytest.raises(ValueError, match="not an HTTP response"):
        ResponseParser().feed(b"HTTP/1.1\r\n\r\n")


class Fixed(resource.Resource):
    isLeaf = True

    def render_POST(self, request):
        return b'{"interval": 5, "peers": []}'


class Streamed(resource.Resource):
    """Written in parts without a length: twisted.web sends it chunked."""

    isLeaf = True

    def render_POST(self, request):
        request.write(b'{"interval": 5, ')
        request.write(b'"peers": []}')
        request.finish()
        return server.NOT_DONE_YET


def test_what_twisted_web_sends():
    """Three pipelined requests on one connection to a twisted.web Site, and the answer stream it writes
    (Content-Length, chunked, a 404 page), parsed whole and split at every offset."""
    root = resource.Resource()
    root.putChild(b"fixed", Fixed())
    root.putChild(b"streamed", Streamed())
    site = server.Site(root, reactor=Clock())
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    body = announce_body(7, ("sha256:" + "a" * 64, "b" * 64))
    channel.dataReceived(
        announce_request(1, body).replace(b"/announce", b"/fixed")
        + announce_request(1, body).replace(b"/announce", b"/streamed")
        + announce_request(1, body)
    )
    stream = transport.value()
    assert b"Transfer-Encoding: chunked" in stream and stream.count(b"Content-Length:") == 2
    assert feed_split(stream) == [200, 200, 404]
    for cut in range(len(stream) + 1):
        assert feed_split(stream, cut) == [200, 200, 404], cut


# -- percentile --


def test_percentile_of_nothing_is_zero():
    assert percentile([], 50) == 0.0


@pytest.mark.parametrize("p", [0, 1, 50, 99, 99.9, 100])
def test_percentile_of_one_value(p):
    assert percentile([0.25], p) == 0.25


def test_percentile_ends():
    values = [0.1, 0.2, 0.3, 0.4]
    assert percentile(values, 0) == 0.1
    assert percentile(values, 100) == 0.4


def test_percentile_is_the_nearest_rank_never_an_interpolation():
    values = [10.0, 20.0, 30.0, 40.0]
    # rank = ceil(n * p / 100): p in (0, 25] -> 1st, (25, 50] -> 2nd, ...; 25.0 would be interpolated at p 50.
    assert [percentile(values, p) for p in (1, 25, 26, 50, 51, 75, 76, 99)] == [10, 10, 20, 20, 30, 30, 40, 40]
    hundred = [float(v) for v in range(1, 101)]
    assert [percentile(hundred, p) for p in range(1, 101)] == hundred
    thousand = [float(v) for v in range(1, 1001)]
    assert percentile(thousand, 99.9) == 999.0 and percentile(thousand, 99.95) == 1000.0


# -- wrk --

#: wrk 4.1 (Debian) with the script of ``wrk_script``, -t1 -c2 -d1s, against a small HTTP/1.1 server answering
#: a third of the announces with 503.
WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:18766
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    44.41ms    8.39ms  48.81ms   95.45%
    Req/Sec    43.90      5.04    50.00     60.00%
  44 requests in 1.00s, 7.84KB read
  Non-2xx or 3xx responses: 17
Requests/sec:     43.92
Transfer/sec:      7.83KB

RESULT {"requests":44,"seconds":1.001740,"non_200":17,"socket_errors":0,"p50":0.047645,"p90":0.047994,\
"p99":0.048806,"max":0.048806}
"""


def test_parse_wrk():
    result = parse_wrk(WRK_OUTPUT)
    assert (result.requests, result.non_200, result.socket_errors) == (44, 17, 0)
    assert (result.p50, result.p90, result.p99, result.max) == (0.047645, 0.047994, 0.048806, 0.048806)
    assert result.seconds == 1.00174 and result.rate == pytest.approx(43.924, abs=1e-3)
    assert result.cpu == {}


def test_parse_wrk_without_a_result_line():
    output = WRK_OUTPUT.rpartition("RESULT")[0]
    with pytest.raises(RuntimeError, match="no RESULT line") as e:
        parse_wrk(output)
    assert "Requests/sec:     43.92" in str(e.value)  # wrk's own output, to see what went wrong


def test_the_wrk_scripts_result_line_is_what_parse_wrk_reads():
    """The ``done`` function's format, filled in as Lua's string.format (C's printf) would, parses back."""
    script = wrk_script([("sha256:" + "1" * 64, "2" * 64)], 10)
    fmt = re.search(r"'\\nRESULT (\{.*?,)'\s*\.\.\s*'(.*?)\\n'", script)
    assert fmt is not None
    line = "RESULT " + (fmt.group(1) + fmt.group(2)) % (900, 20.5, 3, 1, 0.001, 0.002, 0.003, 0.25)
    result = parse_wrk("Running 20s test\n" + line + "\n")
    assert (result.requests, result.seconds, result.non_200, result.socket_errors) == (900, 20.5, 3, 1)
    assert (result.p50, result.p90, result.p99, result.max) == (0.001, 0.002, 0.003, 0.25)


# -- the announces --


def blobs(n: int) -> list[tuple[str, str]]:
    """``n`` (digest, info hash) pairs of the shape the origin makes."""
    return [
        ("sha256:" + hashlib.sha256(b"blob %d" % i).hexdigest(), hashlib.sha256(b"info %d" % i).hexdigest())
        for i in range(n)
    ]


def test_announces_of_10000_peers_over_100_blobs_are_accepted_by_the_tracker():
    table = blobs(100)
    bodies = announce_bodies(table, 10_000)
    assert len(bodies) == 10_000
    peers_of: dict[tuple[str, str], set[str]] = {}
    ips = set()
    for k, body in enumerate(bodies):
        peer, namespace, digest, info_hash, unreachable = parse_announce(body)
        assert unreachable == ()
        assert (namespace, str(digest), info_hash) == (NAMESPACE, *table[k % 100])
        assert (peer.port, peer.complete, peer.origin) == (PEER_PORT, False, False)
        peers_of.setdefault((str(digest), info_hash), set()).add(peer.peer_id)
        ips.add(peer.ip)
    assert sum(len(p) for p in peers_of.values()) == 10_000  # every peer id distinct
    assert len(ips) == 10_000
    assert sorted(len(p) for p in peers_of.values()) == [100] * 100


def test_peer_ip():
    assert peer_ip(0) == "10.0.0.0"
    assert peer_ip(0x010203) == "10.1.2.3"
    assert peer_ip(70_000) == "10.1.17.112"
    assert len({peer_ip(k) for k in range(1 << 16)}) == 1 << 16


def test_wrk_sends_the_same_announces_as_the_python_generator():
    """The script's body format, filled in as Lua's string.format would, is ``announce_body`` to the byte."""
    table = blobs(3)
    script = wrk_script(table, 500)
    assert "local nblobs, npeers = 3, 500" in script
    assert all(f'{{"{d}", "{h}"}}' in script for d, h in table)
    fmt = re.search(r"string\.format\(\s*'(\{\"peer_id\".*?\})',", script)
    assert fmt is not None
    for k in (0, 1, 2, 255, 256, 65_536, 499):
        digest, info_hash = table[k % 3]  # Lua's blobs[(k % nblobs) + 1]
        assert (fmt.group(1) % (k, peer_ip(k), digest, info_hash)).encode() == announce_body(k, table[k % 3])


def test_announce_request():
    body = announce_body(3, blobs(1)[0])
    request = announce_request(8991, body)
    head, _, rest = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /announce HTTP/1.1"
    assert set(lines[1:]) == {
        b"Host: 127.0.0.1:8991",
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
    }
    assert rest == body


# -- the Python generator's closed loop --


async def _serve_and_generate(requests: int, connections: int) -> tuple[tracker_load.Result, list[bytes]]:
    """A server answering every third announce 503 and the others 200, alternately with a length and
    chunked, each answer in two writes; the generator sends ``requests`` announces once."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            body = await reader.readexactly(length)
            seen.append(body)
            k = int(json.loads(body)["peer_id"], 16)
            if k % 3 == 0:
                answer = b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy"
            elif k % 2:
                answer = b'HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{"peers": []}'
            else:
                answer = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nd\r\n{"peers": []}\r\n0\r\n\r\n'
            writer.write(answer[: len(answer) // 2])
            await writer.drain()
            writer.write(answer[len(answer) // 2 :])
            await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    bodies = announce_bodies(blobs(4), requests)
    async with srv:
        result = await generate(
            port, [announce_request(port, b) for b in bodies], connections=connections, duration=0, once=True
        )
    return result, seen


def test_generate_sends_each_announce_once_and_counts_the_answers():
    result, seen = asyncio.run(_serve_and_generate(60, 4))
    assert sorted(seen) == sorted(announce_bodies(blobs(4), 60))
    assert result.requests == 60
    assert result.non_200 == 20  # peers 0, 3, ..., 57
    assert result.socket_errors == 0
    assert 0 < result.p50 <= result.p90 <= result.p99 <= result.max <= result.seconds
