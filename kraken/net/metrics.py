"""``/metrics`` (the Prometheus text format) and ``/readiness`` of every daemon: the one place.

Each daemon wraps its HTTP resource once, in its ``tap.py``::

    site = make_site(observed(app.resource(), Observation(registry, checks, clock=reactor)), ...)

- ``GET /metrics`` answers ``generate_latest`` of the daemon's own ``CollectorRegistry`` (never
  prometheus_client's global one: the herd runs every daemon in one process). Collectors that read
  a domain core's counters at scrape time (``StatsCollector``) are registered on it, so hot paths
  are not instrumented.
- ``GET /readiness`` runs the daemon's checks (``name -> async callable``, each with a timeout):
  200 ``{"ready": true}`` when every one answers truthy, else 503
  ``{"ready": false, "error": "not ready: <names> unreachable", "down": [<names>]}``. Liveness stays
  ``/health``, the app's own.
- Every other request goes on to the daemon's resource unchanged, and is counted once it ends in
  ``kraken_http_requests_total{route, method, code}``: ``route`` is the Klein route template that
  matched (``unmatched`` if none), ``method`` one of the HTTP methods (``other`` for the rest),
  ``code`` the status class (``2xx`` ...), so every label has a bounded set of values; and its duration in
  the histogram ``kraken_http_request_duration_seconds{route}``.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
from klein.interfaces import IKleinRequest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet import defer
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import MethodNotAllowed

from kraken.net.histogram import SECONDS, HistogramCollector, Histograms
from kraken.net.server import json_response

log = Logger()

#: A readiness probe gives each dependency this long to answer.
READINESS_TIMEOUT = 5.0
#: The methods counted by name; any other is counted as ``other``.
METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})

#: The text format ``generate_latest`` writes, as Prometheus 2 (Debian's) asks for it; newer clients call it 1.0.0,
#: which Prometheus 2 does not know.
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

Check = Callable[[], Awaitable[object]]


@attrs.define
class Observation:
    """What ``observed`` serves: the daemon's registry and its readiness checks."""

    registry: CollectorRegistry
    checks: Mapping[str, Check]
    clock: IReactorTime
    timeout: float = READINESS_TIMEOUT
    #: Paths served outside Klein (the tracker's ``/announce``): their route label is the path itself.
    exact: frozenset[str] = frozenset()
    #: Called (each within ``timeout``) before a scrape: collectors whose values need I/O (SQLite) fetch them.
    refresh: Sequence[Callable[[], Awaitable[None]]] = ()
    #: The route template of a raw request path, tried before Klein's (the registry's own router).
    route: Callable[[bytes], str | None] | None = None
    requests: RequestCounts = attrs.field(init=False)
    durations: Histograms = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.requests = RequestCounts()
        self.registry.register(self.requests)
        self.durations = Histograms(SECONDS)
        doc = "Seconds from a request's arrival to the end of its answer, by route template."
        durations = self.durations
        self.registry.register(
            HistogramCollector("kraken_http_request_duration_seconds", doc, lambda: durations.by_labels, ("route",))
        )


class RequestCounts(Collector):
    """``kraken_http_requests_total``, kept in a dict a scrape reads: a request costs a dictionary update,
    less than a prometheus_client ``Counter``'s labels and lock (the tracker answers thousands a second)."""

    NAME = "kraken_http_requests"
    HELP = "HTTP requests answered, by route template, method and status class."
    LABELS = ("route", "method", "code")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, bytes, int], int] = {}

    def add(self, route: str, method: bytes, code: int) -> None:
        """One request answered ``code``; ``method`` one of ``METHODS`` or ``b"other"``."""
        key = (route, method, code // 100)
        self.counts[key] = self.counts.get(key, 0) + 1

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.NAME, self.HELP, labels=self.LABELS)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.NAME, self.HELP, labels=self.LABELS)
        for (route, method, status), n in sorted(self.counts.items()):
            family.add_metric([route, method.decode("ascii"), f"{status}xx"], n)
        yield family


def new_registry() -> CollectorRegistry:
    """A daemon's own registry (``auto_describe``: a collector's names are checked when it is registered), with
    ``kraken_build_info`` in it."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(BuildInfo())
    return registry


class BuildInfo(Collector):
    """``kraken_build_info{version, python} 1``: which release a daemon runs (``kraken status`` shows it)."""

    def __init__(self) -> None:
        try:
            version = importlib.metadata.version("kraken-py")
        except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
            version = "unknown"
        self._labels = [version, platform.python_version()]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "kraken_build_info", "The release this daemon runs (always 1).", labels=["version", "python"]
        )
        family.add_metric(self._labels, 1.0)
        yield family


class MetricsResource(Resource):
    """``GET /metrics``: the registry in the Prometheus text format, after the refreshers ran (a refresher
    that fails or times out is logged, and its collector gives what it had)."""

    isLeaf = True

    def __init__(self, observation: Observation) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.web is unannotated
        self._o = observation

    def render(self, request: IRequest) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return json_response(request, 405, {"error": "method not allowed: use GET"})
        if not self._o.refresh:
            return self._body(request)
        d = gatherResults([self._refreshed(f) for f in self._o.refresh])
        answer_later(request, d.addCallback(lambda _: self._body(request)))
        return NOT_DONE_YET

    def _refreshed(self, refresh: Callable[[], Awaitable[None]]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred.fromCoroutine(_awaited(refresh))
        d.addTimeout(self._o.timeout, self._o.clock)

        def failed(f: Any) -> None:
            if not f.check(defer.CancelledError):
                log.info("metrics: a refresh failed: {error}", error=str(f.value))

        return d.addErrback(failed)

    def _body(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE)
        return generate_latest(self._o.registry)


def answer_later(request: IRequest, body: Deferred[bytes]) -> None:
    """Write ``body`` once it fires and finish, unless the client went away meanwhile (then it is cancelled)."""
    gone: list[bool] = []

    def lost(_: object) -> None:
        gone.append(True)
        body.cancel()

    def write(data: bytes) -> None:
        if not gone:
            request.write(data)
            request.finish()

    request.notifyFinish().addErrback(lost)  # type: ignore[attr-defined]  # twisted.web.server.Request has it
    body.addCallback(write).addErrback(
        lambda f: None if gone else log.failure("answering {path} failed", f, path=request.path)
    )


class ReadinessResource(Resource):
    """``GET /readiness``: every check answered within its timeout, or 503 naming the ones that did not."""

    isLeaf = True

    def __init__(self, checks: Mapping[str, Check], clock: IReactorTime, timeout: float) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.web is unannotated
        self._checks = dict(checks)
        self._clock = clock
        self._timeout = timeout

    def render(self, request: IRequest) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return json_response(request, 405, {"error": "method not allowed: use GET"})
        answer_later(request, Deferred.fromCoroutine(self.down()).addCallback(lambda down: _readiness(request, down)))
        return NOT_DONE_YET

    async def down(self) -> list[str]:
        """The names of the checks that failed, in their order."""
        names = list(self._checks)
        results = await gatherResults([Deferred.fromCoroutine(self._check(name)) for name in names])
        return [name for name, ok in zip(names, results, strict=True) if not ok]

    async def _check(self, name: str) -> bool:
        d = Deferred.fromCoroutine(_awaited(self._checks[name]))
        d.addTimeout(self._timeout, self._clock)
        try:
            return bool(await d)
        except defer.TimeoutError:
            log.info(
                "readiness: {dependency} did not answer within {duration}s", dependency=name, duration=self._timeout
            )
        except defer.CancelledError:
            raise
        except Exception as e:
            log.info("readiness: {dependency} failed: {error}", dependency=name, error=str(e))
        return False


def _readiness(request: IRequest, down: list[str]) -> bytes:
    if down:
        doc = {"ready": False, "error": f"not ready: {', '.join(down)} unreachable", "down": down}
        return json_response(request, 503, doc)
    return json_response(request, 200, {"ready": True})


async def _awaited(call: Callable[[], Awaitable[object]]) -> object:
    return await call()


def route_of(request: IRequest, exact: frozenset[str] = frozenset()) -> str:
    """The Klein route template ``request`` matched, its path if one of ``exact``, or ``unmatched``."""
    if exact:
        path: str = request.path.decode("latin-1")
        if path in exact:
            return path
    klein = request.getComponent(IKleinRequest)  # type: ignore[attr-defined]  # Request is Componentized
    mapper = getattr(klein, "mapper", None)
    if mapper is None:
        return "unmatched"
    try:
        rule, _ = mapper.match(return_rule=True)
    except MethodNotAllowed as e:  # the path matched: the route of one of the methods it takes
        try:
            rule, _ = mapper.match(method=next(iter(e.valid_methods or ())), return_rule=True)
        except Exception:
            return "unmatched"
    except Exception:
        return "unmatched"
    return str(rule.rule)


class Observed(Resource):
    """``/metrics`` and ``/readiness`` answered here; everything else goes to ``rest``, and is counted."""

    isLeaf = True

    def __init__(self, rest: IResource, observation: Observation, *, routes: bool = True) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.web is unannotated
        self._rest = rest
        self._mine: dict[tuple[bytes, ...], IResource] = {}
        if routes:
            self._mine[(b"metrics",)] = MetricsResource(observation)
            self._mine[(b"readiness",)] = ReadinessResource(observation.checks, observation.clock, observation.timeout)
        self._requests = observation.requests
        self._durations = observation.durations
        self._clock = observation.clock
        self._exact = observation.exact
        self._route = observation.route
        # The exact paths as requests carry them: their label in one lookup (every announce is one).
        self._exact_paths = {p.encode("latin-1"): p for p in observation.exact}

    def render(self, request: IRequest) -> Any:
        mine = self._mine.get(tuple(request.postpath))
        if mine is not None:
            return mine.render(request)
        exact = self._exact_paths.get(request.path)
        if exact is not None:  # the tracker's announces, thousands a second: counted, not timed
            result = getChildForRequest(self._rest, request).render(request)
            if result is not NOT_DONE_YET or getattr(request, "finished", False):
                self._add(request, exact)
            else:
                request.notifyFinish().addBoth(lambda _: self._add(request, exact))  # type: ignore[attr-defined]  # Request has it
            return result
        start = self._clock.seconds()
        result = getChildForRequest(self._rest, request).render(request)
        if result is not NOT_DONE_YET or getattr(request, "finished", False):
            self._count(request, start)  # answered already: no Deferred to wait on
        else:
            request.notifyFinish().addBoth(lambda _: self._count(request, start))  # type: ignore[attr-defined]  # as above
        return result

    def _route_of(self, request: IRequest) -> str:
        found = None if self._route is None else self._route(request.path)
        return found if found is not None else route_of(request, self._exact)

    def _add(self, request: IRequest, route: str) -> None:
        method = request.method
        self._requests.add(route, method if method in METHODS else b"other", request.code)  # type: ignore[attr-defined]  # Request has it

    def _count(self, request: IRequest, start: float) -> None:
        route = self._route_of(request)
        self._add(request, route)
        self._durations.observe((route,), self._clock.seconds() - start)


def observed(rest: IResource, observation: Observation) -> IResource:
    """The daemon's resource ``rest`` with ``/metrics`` and ``/readiness`` in front of it."""
    return Observed(rest, observation)


def counted(rest: IResource, observation: Observation) -> IResource:
    """``rest`` with its requests counted, without the two routes (a daemon's second listener)."""
    return Observed(rest, observation, routes=False)


@attrs.frozen
class Series:
    """One series a ``StatsCollector`` reads: ``name`` (without ``_total``), help text, ``kind``
    (``counter`` or ``gauge``), and how to read its value, or its labelled values, from the stats."""

    name: str
    doc: str
    kind: str
    read: Callable[[Any], float | Mapping[tuple[str, ...], float]]
    labels: tuple[str, ...] = ()


class StatsCollector(Collector):
    """A collector reading a domain core's counters at scrape time: ``stats()`` is called once per
    scrape and each ``Series`` reads its value from what it returned (nothing is counted twice)."""

    def __init__(self, stats: Callable[[], Any], series: Iterable[Series]) -> None:
        self._stats = stats
        self._series = tuple(series)

    def describe(self) -> Iterator[Metric]:
        for s in self._series:
            yield _family(s)

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:
            return
        for s in self._series:
            family = _family(s)
            value = s.read(stats)
            if isinstance(value, Mapping):
                for labels, v in value.items():
                    family.add_metric(list(labels), float(v))
            else:
                family.add_metric([], float(value))
            yield family


def _family(s: Series) -> CounterMetricFamily | GaugeMetricFamily:
    if s.kind == "counter":
        return CounterMetricFamily(s.name, s.doc, labels=s.labels)
    return GaugeMetricFamily(s.name, s.doc, labels=s.labels)


def counter(name: str, doc: str, field: str) -> Series:
    """A counter read from the attribute (or key) ``field`` of the stats."""
    return Series(name, doc, "counter", _reader(field))


def gauge(name: str, doc: str, field: str) -> Series:
    """A gauge read from the attribute (or key) ``field`` of the stats."""
    return Series(name, doc, "gauge", _reader(field))


def table(
    text: str,
    read: Callable[[str], Callable[[Any], float | Mapping[tuple[str, ...], float]]] | None = None,
    labels: tuple[str, ...] = (),
) -> tuple[Series, ...]:
    """Series from a table, one a line: ``counter|gauge  <name>  <field>  <help text>`` (``name`` without
    ``_total``). Each reads the attribute (or key) ``field`` of the stats, or what ``read(field)`` reads
    (then labelled ``labels``)."""
    found = []
    for line in text.strip().splitlines():
        kind, name, field, doc = line.split(None, 3)
        if kind not in ("counter", "gauge"):
            raise ValueError(f"a series is a counter or a gauge, not {kind!r}: {line!r}")
        found.append(Series(name, doc, kind, (read or _reader)(field), labels))
    return tuple(found)


def _reader(field: str) -> Callable[[Any], float]:
    return lambda stats: _field(stats, field)


def _field(stats: Any, path: str) -> float:
    value = stats
    for part in path.split("."):
        value = value[part] if isinstance(value, Mapping) else getattr(value, part)
    return float(value)


class DiskCollector(Collector):
    """The file system holding ``path`` (a store's root), at scrape time: its size and the bytes free."""

    def __init__(self, path: str) -> None:
        self._path = path

    def describe(self) -> Iterator[Metric]:
        return self._families(0, 0)

    def collect(self) -> Iterator[Metric]:
        try:
            usage = shutil.disk_usage(self._path)
        except OSError as e:
            log.info("metrics: the disk usage of {path} is unknown: {error}", path=self._path, error=str(e))
            return iter(())
        return self._families(usage.total, usage.free)

    def _families(self, size: int, free: int) -> Iterator[Metric]:
        yield GaugeMetricFamily("kraken_store_filesystem_size_bytes", "Size of the store's file system.", size)
        yield GaugeMetricFamily("kraken_store_filesystem_free_bytes", "Bytes free on the store's file system.", free)


#: A store's cache cleanup (``kraken.store.cleanup.CacheCleanup.counts``, origin and agent alike).
CLEANUP = table("""
counter kraken_store_cleanup_sweeps              sweeps              Cache cleanup sweeps finished.
counter kraken_store_cleanup_sweep_failures      sweep_failures      Cache cleanup sweeps that failed.
counter kraken_store_cleanup_aggressive_sweeps   aggressive_sweeps   Sweeps with the aggressive TTI (disk full).
counter kraken_store_cleanup_evicted_blobs       blobs_evicted       Idle blobs evicted from the cache.
counter kraken_store_cleanup_kept_blobs          blobs_kept          Idle blobs kept because in use (per sweep).
counter kraken_store_cleanup_collected_partials  partials_collected  Partial downloads of an earlier run deleted.
""")  # fmt: skip


def cleanup_collector(counts: Callable[[], Mapping[str, int]]) -> StatsCollector:
    """The cache cleanup's series, read from ``counts()`` (its ``counts``) at each scrape."""
    return StatsCollector(counts, CLEANUP)


class QueueCollector(Collector):
    """A durable queue's depth (``<prefix>_pending``, unless ``depth`` is false: the daemon counts it already)
    and the age of its oldest task (``<prefix>_lag_seconds``, 0 when empty), as ``read()`` (an I/O: SQLite)
    gives them; ``refresh`` is an ``Observation`` refresher. Until the first read, no series."""

    def __init__(
        self, prefix: str, what: str, read: Callable[[], Awaitable[tuple[int, float]]], *, depth: bool = True
    ) -> None:
        self._prefix = prefix
        self._what = what
        self._read = read
        self._depth = depth
        self.last: tuple[int, float] | None = None

    async def refresh(self) -> None:
        self.last = await self._read()

    def describe(self) -> Iterator[Metric]:
        return self._families(0, 0.0)

    def collect(self) -> Iterator[Metric]:
        return iter(()) if self.last is None else self._families(*self.last)

    def _families(self, count: int, lag: float) -> Iterator[Metric]:
        if self._depth:
            yield GaugeMetricFamily(f"{self._prefix}_pending", f"{self._what} tasks waiting now (queue depth).", count)
        doc = f"Age of the oldest waiting {self._what} task, seconds (0 when none)."
        yield GaugeMetricFamily(f"{self._prefix}_lag_seconds", doc, lag)
