"""``kraken status``'s logic: probing daemons (StubTreq over fake daemons, a task.Clock for timeouts), reading
``/metrics``, the table and the JSON, the exit status."""

from __future__ import annotations

import io
import json

from results import result_of
from treq.testing import StubTreq
from twisted.internet import error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from kraken.cli import status
from kraken.cli.status import DaemonStatus, Target

ORIGIN_METRICS = """\
# HELP kraken_origin_ring_members Members of the ring now.
# TYPE kraken_origin_ring_members gauge
kraken_origin_ring_members 3.0
# HELP kraken_origin_ring_unhealthy_members Members marked unhealthy.
# TYPE kraken_origin_ring_unhealthy_members gauge
kraken_origin_ring_unhealthy_members 1.0
# HELP kraken_origin_writeback_pending Write-back tasks waiting.
# TYPE kraken_origin_writeback_pending gauge
kraken_origin_writeback_pending 7.0
# HELP kraken_build_info Build.
# TYPE kraken_build_info gauge
kraken_build_info{version="0.1.0"} 1.0
"""
INDEX_METRICS = """\
# HELP kraken_buildindex_replication_pending Copies queued.
# TYPE kraken_buildindex_replication_pending gauge
kraken_buildindex_replication_pending{remote="east"} 2.0
kraken_buildindex_replication_pending{remote="west"} 5.0
# HELP kraken_buildindex_writeback_pending Tags waiting to be written back.
# TYPE kraken_buildindex_writeback_pending gauge
kraken_buildindex_writeback_pending 4.0
"""
NOT_READY = b'{"ready": false, "error": "not ready: origin unreachable", "down": ["origin"]}'


class Daemons(Resource):
    """Fake daemons told apart by the request's host: ``routes[(host, path)] = (code, body)``; a route whose
    body is None never answers."""

    isLeaf = True

    def __init__(self, routes: dict[tuple[str, str], tuple[int, bytes | None]]) -> None:
        super().__init__()
        self.routes = routes

    def render(self, request):
        host = request.getHeader(b"host").decode()
        code, body = self.routes.get((host, request.path.decode()), (404, b"not found"))
        if body is None:
            return NOT_DONE_YET
        request.setResponseCode(code)
        return body


def healthy(host: str, metrics: str = "") -> dict[tuple[str, str], tuple[int, bytes | None]]:
    return {
        (host, "/health"): (200, b"OK"),
        (host, "/readiness"): (200, b'{"ready": true}'),
        (host, "/metrics"): (200, metrics.encode()),
    }


def probe_all(routes, targets, timeout=5.0):
    stub, clock = StubTreq(Daemons(routes)), Clock()

    def pump():
        stub.flush()
        clock.advance(timeout)

    return result_of(status.probe_all(stub, targets, clock, timeout), pump)


def test_a_healthy_cluster_with_its_ring_and_queues():
    routes = {**healthy("o1:1", ORIGIN_METRICS), **healthy("bi:2", INDEX_METRICS), **healthy("t:3")}
    targets = [Target("origin", "http://o1:1"), Target("build_index", "http://bi:2"), Target("tracker", "http://t:3")]
    origin, index, tracker = probe_all(routes, targets)
    assert (origin.alive, origin.ready, origin.error) == (True, True, None)
    assert (origin.ring_members, origin.ring_unhealthy, origin.version) == (3, 1, "0.1.0")
    assert origin.queues == {"writeback": 7}
    assert index.queues == {"replication": 7, "writeback": 4}
    assert (tracker.ring_members, tracker.queues, tracker.version) == (None, {}, None)
    assert status.exit_code([origin, index, tracker]) == 0


def test_not_ready_names_what_is_down():
    routes = {**healthy("t:3"), ("t:3", "/readiness"): (503, NOT_READY)}
    [tracker] = probe_all(routes, [Target("tracker", "http://t:3")])
    assert (tracker.alive, tracker.ready, tracker.down) == (True, False, ["origin"])
    assert status.exit_code([tracker]) == 1


def test_readiness_without_json_says_its_status():
    routes = {**healthy("t:3"), ("t:3", "/readiness"): (500, b"<html>oops")}
    [tracker] = probe_all(routes, [Target("tracker", "http://t:3")])
    assert tracker.down == ["/readiness answered 500"]


def test_health_not_200_is_down():
    [proxy] = probe_all({("p:4", "/health"): (503, b"")}, [Target("proxy", "http://p:4")])
    assert (proxy.alive, proxy.healthy, proxy.error) == (False, False, "/health answered 503")


def test_a_daemon_that_never_answers_times_out():
    routes = {**healthy("a:5"), ("a:5", "/readiness"): (200, None)}
    [agent] = probe_all(routes, [Target("agent", "http://a:5")], timeout=2.0)
    assert (agent.alive, agent.ready, agent.error) == (True, False, "no answer within 2s")


def test_metrics_that_do_not_parse_are_ignored():
    [origin] = probe_all(healthy("o:1", "this is { not prometheus"), [Target("origin", "http://o:1")])
    assert origin.healthy and origin.ring_members is None


def test_connection_errors_in_one_line():
    refused = error.ConnectionRefusedError("111: Connection refused")
    assert status._why(refused, 5) == "connection refused"
    assert status._why(ResponseNeverReceived([Failure(refused)]), 5) == "connection refused"
    assert status._why(error.DNSLookupError("nope"), 5) == "host name not found"
    assert status._why(ValueError("first line\nsecond"), 5) == "first line"


def test_table_shows_every_daemon():
    statuses = [
        DaemonStatus("origin", "http://o:1", True, True, ring_members=3, ring_unhealthy=0, queues={"writeback": 2}),
        DaemonStatus("tracker", "http://t:3", True, False, down=["origin"]),
        DaemonStatus("proxy", "http://p:4", error="connection refused"),
    ]
    out = io.StringIO()
    status.render_table(statuses, out, width=200)
    text = out.getvalue()
    for expected in ("http://o:1", "3 (0 unhealthy)", "writeback 2", "not ready (origin)", "connection refused"):
        assert expected in text
    assert "1 of 3 daemons healthy" in text


def test_json_for_scripts():
    statuses = [DaemonStatus("origin", "http://o:1", True, True), DaemonStatus("proxy", "http://p:4", error="x")]
    out = io.StringIO()
    status.render_json(statuses, out)
    doc = json.loads(out.getvalue())
    assert doc["healthy"] is False
    assert [(d["kind"], d["healthy"], d["error"]) for d in doc["daemons"]] == [
        ("origin", True, None),
        ("proxy", False, "x"),
    ]
