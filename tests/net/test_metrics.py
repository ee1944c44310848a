"""kraken.net.metrics: ``/metrics`` from a daemon's own registry, ``/readiness`` from its checks (each with a
timeout), and every other request counted by route template, method and status class, on StubTreq."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import treq
from klein import Klein
from metrics_samples import Samples, requests, scrape, value
from prometheus_client import REGISTRY
from results import result_of
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from kraken.net.metrics import (
    DiskCollector,
    Observation,
    QueueCollector,
    Series,
    StatsCollector,
    cleanup_collector,
    counted,
    counter,
    gauge,
    new_registry,
    observed,
)

BASE = "http://daemon.test"


class App:
    app = Klein()

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        return b"OK\n"

    @app.route("/things/<name>", methods=["GET", "PUT"])
    def thing(self, request: IRequest, name: str) -> bytes:
        if name == "missing":
            request.setResponseCode(404)
        return name.encode()


@attrs.define
class Stats:
    bytes_in: int = 0
    open: int = 0
    by_kind: dict[str, int] = attrs.field(factory=dict)


class Daemon:
    """An app behind ``observed`` with checks of the test's own, on a clock."""

    def __init__(self, checks: dict[str, Callable[[], Awaitable[object]]] | None = None, **kw: Any) -> None:
        self.clock = Clock()
        self.registry = new_registry()
        self.observation = Observation(self.registry, checks or {}, clock=self.clock, timeout=5.0, **kw)
        self.stub = StubTreq(observed(App().app.resource(), self.observation))

    def request(self, method: str, path: str, advance: float = 0.0) -> tuple[int, bytes, Any]:
        async def go() -> tuple[int, bytes, Any]:
            response = await self.stub.request(method, BASE + path)
            return response.code, await treq.content(response), response.headers

        d = Deferred.fromCoroutine(go())
        self.stub.flush()
        if advance:
            self.clock.advance(advance)
            self.stub.flush()
        return result_of(d, self.stub.flush)

    def samples(self) -> Samples:
        return scrape(self.stub, BASE)


def test_requests_are_counted_by_route_template_method_and_status_class() -> None:
    daemon = Daemon()
    for path in ("/things/a", "/things/b", "/things/missing", "/nowhere/at/all"):
        daemon.request("GET", path)
    daemon.request("PUT", "/things/c")
    daemon.request("BREW", "/things/c")
    samples = daemon.samples()
    assert requests(samples, "/things/<name>", "GET", "2xx") == 2.0  # two paths, one series
    assert requests(samples, "/things/<name>", "GET", "4xx") == 1.0
    assert requests(samples, "/things/<name>", "PUT", "2xx") == 1.0
    assert requests(samples, "/things/<name>", "other", "4xx") == 1.0  # 405, any method name folded
    assert requests(samples, "unmatched", "GET", "4xx") == 1.0
    assert not any(labels and dict(labels).get("route", "").startswith("/things/a") for _, labels in samples)


def test_the_registry_is_the_daemons_own() -> None:
    daemon = Daemon()
    daemon.request("GET", "/health")
    assert REGISTRY.get_sample_value("kraken_http_requests_total", {"route": "/health"}) is None
    assert requests(daemon.samples(), "/health", "GET", "2xx") == 1.0


def test_exact_paths_and_a_router_of_its_own_name_the_route() -> None:
    daemon = Daemon(exact=frozenset({"/fast"}), route=lambda path: "/v2/<name>" if path.startswith(b"/v2/") else None)
    daemon.request("GET", "/fast")
    daemon.request("GET", "/v2/library/alpine")
    daemon.request("GET", "/things/x")
    samples = daemon.samples()
    assert requests(samples, "/fast", "GET", "4xx") == 1.0  # Klein answered 404, but it is the fast path's
    assert requests(samples, "/v2/<name>", "GET", "4xx") == 1.0
    assert requests(samples, "/things/<name>", "GET", "2xx") == 1.0


def test_a_second_listener_is_counted_without_the_routes() -> None:
    daemon = Daemon()
    second = StubTreq(counted(App().app.resource(), daemon.observation))

    async def get(path: str) -> int:
        return (await second.get(BASE + path)).code

    assert result_of(Deferred.fromCoroutine(get("/metrics")), second.flush) == 404  # the app's, not ours
    samples = daemon.samples()
    assert requests(samples, "unmatched", "GET", "4xx") == 1.0


def test_metrics_refuses_other_methods() -> None:
    code, _, headers = Daemon().request("POST", "/metrics")
    assert code == 405
    assert headers.getRawHeaders("allow") == ["GET, HEAD"]


def test_a_stats_collector_reads_the_stats_at_scrape_time() -> None:
    stats = Stats()
    daemon = Daemon()
    daemon.registry.register(
        StatsCollector(
            lambda: stats,
            [
                counter("demo_received_bytes", "Bytes in.", "bytes_in"),
                gauge("demo_open", "Open now.", "open"),
                Series("demo_things", "Things by kind.", "counter", lambda st: {(k,): v for k, v in st.by_kind.items()},
                       ("kind",)),
            ],
        )
    )  # fmt: skip
    stats.bytes_in, stats.open, stats.by_kind = 100, 3, {"a": 1, "b": 2}
    samples = daemon.samples()
    assert samples[("demo_received_bytes_total", ())] == 100.0
    assert samples[("demo_open", ())] == 3.0
    assert samples[("demo_things_total", (("kind", "b"),))] == 2.0
    stats.bytes_in = 150
    assert daemon.samples()[("demo_received_bytes_total", ())] == 150.0


def test_a_collector_without_stats_gives_no_series() -> None:
    daemon = Daemon()
    daemon.registry.register(StatsCollector(lambda: None, [gauge("demo_open", "Open now.", "open")]))
    assert not [k for k in daemon.samples() if k[0] == "demo_open"]


def test_refreshers_run_before_the_scrape_and_a_failing_one_is_skipped() -> None:
    stats = Stats()

    async def refresh() -> None:
        stats.open = 7

    async def broken() -> None:
        raise OSError("database is locked")

    daemon = Daemon(refresh=[refresh, broken])
    daemon.registry.register(StatsCollector(lambda: stats, [gauge("demo_open", "Open now.", "open")]))
    assert daemon.samples()[("demo_open", ())] == 7.0


def test_ready_when_every_check_answers() -> None:
    daemon = Daemon({"origin": lambda: succeed(True), "redis": _true})
    code, body, _ = daemon.request("GET", "/readiness")
    assert (code, body) == (200, b'{"ready":true}\n')


async def _true() -> bool:
    return True


def test_not_ready_names_the_checks_that_failed_or_timed_out() -> None:
    async def refused() -> bool:
        raise ConnectionRefusedError("connection refused")

    async def no() -> bool:
        return False

    daemon = Daemon({"origin": lambda: Deferred(), "build-index": refused, "tracker": _true, "redis": no})
    code, body, _ = daemon.request("GET", "/readiness", advance=5.0)
    assert code == 503
    assert body == (
        b'{"ready":false,"error":"not ready: origin, build-index, redis unreachable",'
        b'"down":["origin","build-index","redis"]}\n'
    )


def test_every_other_request_goes_to_the_app() -> None:
    daemon = Daemon()
    assert daemon.request("GET", "/things/zz")[:2] == (200, b"zz")


def test_a_plain_resource_behind_it_is_counted_unmatched() -> None:
    class Plain(Resource):
        isLeaf = True

        def render(self, request: IRequest) -> bytes:
            return b"plain"

    daemon = Daemon()
    daemon.stub = StubTreq(observed(Plain(), daemon.observation))
    assert daemon.request("GET", "/x/y")[:2] == (200, b"plain")
    assert requests(daemon.samples(), "unmatched", "GET", "2xx") == 1.0


def test_the_disk_collector_reads_the_file_system(tmp_path: Path) -> None:
    daemon = Daemon()
    daemon.registry.register(DiskCollector(str(tmp_path)))
    samples = daemon.samples()
    usage = shutil.disk_usage(tmp_path)
    assert samples[("kraken_store_filesystem_size_bytes", ())] == usage.total
    assert 0 < samples[("kraken_store_filesystem_free_bytes", ())] <= usage.total
    gone = Daemon()
    gone.registry.register(DiskCollector(str(tmp_path / "gone")))  # unknown: no series, logged
    assert ("kraken_store_filesystem_size_bytes", ()) not in gone.samples()


class Slow(Resource):
    """Answers on the test's clock: a request ends when ``answer`` is called."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[IRequest] = []

    def render(self, request: IRequest) -> object:
        self.waiting.append(request)
        return NOT_DONE_YET

    def answer(self) -> None:
        for request in self.waiting:
            request.write(b"done")
            request.finish()


def test_request_durations_are_a_histogram_by_route() -> None:
    clock, slow = Clock(), Slow()
    route = lambda path: "/slow" if path == b"/slow" else None  # noqa: E731
    observation = Observation(new_registry(), {}, clock=clock, route=route)
    stub = StubTreq(observed(slow, observation))
    d = stub.get(BASE + "/slow")
    stub.flush()
    clock.advance(3.0)
    slow.answer()
    stub.flush()
    assert result_of(d, stub.flush).code == 200
    samples = scrape(stub, BASE)
    assert value(samples, "kraken_http_request_duration_seconds_count", route="/slow") == 1.0
    assert value(samples, "kraken_http_request_duration_seconds_sum", route="/slow") == 3.0
    assert value(samples, "kraken_http_request_duration_seconds_bucket", route="/slow", le="2.5") == 0.0
    assert value(samples, "kraken_http_request_duration_seconds_bucket", route="/slow", le="5.0") == 1.0


def test_exact_paths_are_counted_not_timed() -> None:
    """The tracker's announces (its ``exact`` path), thousands a second, answered in microseconds."""
    clock, slow = Clock(), Slow()
    stub = StubTreq(observed(slow, Observation(new_registry(), {}, clock=clock, exact=frozenset({"/slow"}))))
    d = stub.get(BASE + "/slow")
    stub.flush()
    slow.answer()
    stub.flush()
    assert result_of(d, stub.flush).code == 200
    samples = scrape(stub, BASE)
    assert requests(samples, "/slow", "GET", "2xx") == 1.0
    assert not [name for name, _ in samples if name.startswith("kraken_http_request_duration")], samples


def test_the_cleanup_and_a_queue_backlog_are_series() -> None:
    counts = {"sweeps": 3, "sweep_failures": 1, "aggressive_sweeps": 2, "blobs_evicted": 7, "blobs_kept": 4,
              "partials_collected": 5}  # fmt: skip
    registry = new_registry()
    registry.register(cleanup_collector(lambda: counts))
    queue = QueueCollector("kraken_test_queue", "Test", lambda: succeed((4, 90.0)))
    registry.register(queue)
    daemon_stub = StubTreq(observed(Resource(), Observation(registry, {}, clock=Clock(), refresh=[queue.refresh])))
    samples = scrape(daemon_stub, BASE)
    assert value(samples, "kraken_store_cleanup_evicted_blobs_total") == 7.0
    assert value(samples, "kraken_store_cleanup_collected_partials_total") == 5.0
    assert value(samples, "kraken_store_cleanup_sweep_failures_total") == 1.0
    assert value(samples, "kraken_test_queue_pending") == 4.0
    assert value(samples, "kraken_test_queue_lag_seconds") == 90.0


def test_every_daemon_registry_says_which_release_it_runs() -> None:
    import importlib.metadata
    import platform

    registry = new_registry()
    labels = {"version": importlib.metadata.version("kraken-py"), "python": platform.python_version()}
    assert registry.get_sample_value("kraken_build_info", labels) == 1.0
