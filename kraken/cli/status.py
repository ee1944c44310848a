"""``kraken status``: every daemon of a cluster asked ``/health``, ``/readiness`` and ``/metrics``, shown in a table.

The daemons come from flags (``--origin URL``... once per daemon) or a cluster file (``--config FILE``)::

    origin: [https://origin-1:15002, https://origin-2:15002]
    tracker: https://tracker:15003
    build_index: [https://build-index:15004]
    proxy: https://proxy:15000
    agent: [http://node-1:15007]          # the agent API's address
    tls: {ca: ca.crt, cert: client.crt, key: client.key}

For each daemon: alive (``/health`` answers 200), ready (``/readiness`` answers 200; else the dependencies it
names as down), the version (``kraken_build_info{version}`` when the daemon serves it), and from ``/metrics``
(parsed with prometheus_client's parser): the ring's members and unhealthy members on an origin, and the
queue depths: the write-back of the origin's blobs and of the build-index's tags (``kraken_origin_writeback_pending``,
``kraken_buildindex_writeback_pending``) and the build-index's replication
(``kraken_buildindex_replication_pending``, summed over remotes). Exit status: 0 every daemon alive and ready,
1 any not, 2 a usage or configuration error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

import attrs
import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime

from kraken.net.client import limited_content

KINDS = ("origin", "tracker", "build_index", "proxy", "agent")
TLS_KEYS = ("ca", "cert", "key")
#: Each request of a probe gives up after this many seconds.
TIMEOUT = 5.0
#: The most of ``/metrics`` read from one daemon.
MAX_METRICS_BYTES = 8 << 20
QUEUES = (
    ("writeback", "kraken_origin_writeback_pending"),
    ("writeback", "kraken_buildindex_writeback_pending"),  # tags written back to the build-index's backends
    ("replication", "kraken_buildindex_replication_pending"),
)


class ClusterFileError(ValueError):
    """A cluster file that cannot be used, naming the file and the key."""


@attrs.frozen
class Target:
    kind: str
    url: str


@attrs.define
class DaemonStatus:
    """What one daemon answered; ``error`` says why it could not be asked at all."""

    kind: str
    url: str
    alive: bool = False
    ready: bool = False
    down: list[str] = attrs.Factory(list)
    version: str | None = None
    ring_members: int | None = None
    ring_unhealthy: int | None = None
    queues: dict[str, int] = attrs.Factory(dict)
    error: str | None = None

    @property
    def healthy(self) -> bool:
        return self.alive and self.ready

    def to_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "healthy": self.healthy}


def _urls(value: Any, where: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ClusterFileError(f"{where}: a URL or a list of URLs")
    for v in values:
        if not v.startswith(("http://", "https://")):
            raise ClusterFileError(f"{where}: {v!r} is not an http:// or https:// URL")
    return [v.rstrip("/") for v in values]


def load_cluster(path: str) -> tuple[list[Target], dict[str, str]]:
    """The daemons and the ``tls`` block (``ca``, ``cert``, ``key``: paths) of a cluster file."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ClusterFileError(f"{path}: cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise ClusterFileError(f"{path}: a mapping of daemon kinds to URLs expected")
    unknown = sorted(set(data) - {*KINDS, "tls"})
    if unknown:
        raise ClusterFileError(f"{path}: key {unknown[0]}: unknown (known: {', '.join([*KINDS, 'tls'])})")
    targets = [Target(kind, url) for kind in KINDS if kind in data for url in _urls(data[kind], f"{path}: key {kind}")]
    tls = data.get("tls") or {}
    if not isinstance(tls, dict) or not set(tls) <= set(TLS_KEYS) or not all(isinstance(v, str) for v in tls.values()):
        raise ClusterFileError(f"{path}: key tls: a mapping with ca, cert and key (paths)")
    return targets, dict(tls)


def samples(body: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of a text-format body: name -> [(labels, value)]."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            found.setdefault(s.name, []).append((dict(s.labels), s.value))
    return found


def read_metrics(status: DaemonStatus, body: str) -> None:
    """Fill ``status`` from a ``/metrics`` body (a body that does not parse leaves it as it is)."""
    try:
        found = samples(body)
    except ValueError:
        return
    for labels, _ in found.get("kraken_build_info", []):
        status.version = labels.get("version", status.version)
    if "kraken_origin_ring_members" in found:
        status.ring_members = int(found["kraken_origin_ring_members"][0][1])
    if "kraken_origin_ring_unhealthy_members" in found:
        status.ring_unhealthy = int(found["kraken_origin_ring_unhealthy_members"][0][1])
    for queue, name in QUEUES:
        if name in found:
            status.queues[queue] = int(sum(value for _, value in found[name]))


async def fetch(
    client: Any,
    method: str,
    url: str,
    clock: IReactorTime,
    timeout: float,
    limit: int,
    *,
    data: bytes | None = None,
    headers: Mapping[bytes, list[bytes]] | None = None,
) -> tuple[int, bytes]:
    """(status, body) of one request given up after ``timeout`` seconds, its body refused past ``limit`` bytes
    as it arrives (``kraken.net.client.limited_content``)."""

    async def go() -> tuple[int, bytes]:
        response = await client.request(method, url, data=data, headers=dict(headers or {}))
        return response.code, await limited_content(response, clock, limit, timeout)

    d = Deferred.fromCoroutine(go())
    d.addTimeout(timeout, clock)
    return await d


async def _get(client: Any, url: str, clock: IReactorTime, timeout: float) -> tuple[int, bytes]:
    return await fetch(client, "GET", url, clock, timeout, MAX_METRICS_BYTES)


def _why(error: BaseException, timeout: float) -> str:
    """One short line for why a daemon could not be asked."""
    from twisted.internet import error as net_error
    from twisted.web._newclient import ResponseFailed

    from kraken.net.tls import describe

    if isinstance(error, ResponseFailed) and error.reasons:  # ResponseNeverReceived too
        error = error.reasons[0].value
    if isinstance(error, net_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, (CancelledError, net_error.TimeoutError)):
        return f"no answer within {timeout:g}s"
    if isinstance(error, net_error.DNSLookupError):
        return "host name not found"
    text = describe(error).strip() or error.__class__.__name__
    return text.splitlines()[0][:200]


async def probe(client: Any, target: Target, clock: IReactorTime, timeout: float = TIMEOUT) -> DaemonStatus:
    """Ask one daemon its ``/health``, ``/readiness`` and ``/metrics``."""
    status = DaemonStatus(target.kind, target.url)
    try:
        code, _ = await _get(client, target.url + "/health", clock, timeout)
        status.alive = code == 200
        if not status.alive:
            status.error = f"/health answered {code}"
        code, body = await _get(client, target.url + "/readiness", clock, timeout)
        status.ready = code == 200
        if not status.ready:
            status.down = _down(body, code)
        code, body = await _get(client, target.url + "/metrics", clock, timeout)
        if code == 200:
            read_metrics(status, body.decode("utf-8", "replace"))
    except Exception as e:
        status.error = _why(e, timeout)
    return status


def _down(body: bytes, code: int) -> list[str]:
    try:
        doc = json.loads(body)
        return [str(name) for name in doc.get("down", [])] or [f"/readiness answered {code}"]
    except (ValueError, AttributeError):
        return [f"/readiness answered {code}"]


async def probe_all(
    client: Any, targets: Sequence[Target], clock: IReactorTime, timeout: float = TIMEOUT
) -> list[DaemonStatus]:
    """Every daemon asked at once; the answers in the order of ``targets``."""
    found: list[DaemonStatus] = await gatherResults(
        [Deferred.fromCoroutine(probe(client, t, clock, timeout)) for t in targets]
    )
    return found


def exit_code(statuses: Sequence[DaemonStatus]) -> int:
    return 0 if all(s.healthy for s in statuses) else 1


def render_json(statuses: Sequence[DaemonStatus], out: IO[str]) -> None:
    doc = {"healthy": exit_code(statuses) == 0, "daemons": [s.to_json() for s in statuses]}
    json.dump(doc, out, indent=2)
    out.write("\n")


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _row(s: DaemonStatus) -> list[str]:
    alive = "[green]up[/]" if s.alive else "[red]down[/]"
    if s.ready:
        ready = "[green]ready[/]"
    elif s.alive:
        ready = f"[red]not ready[/] ({', '.join(s.down)})"
    else:
        ready = "[red]-[/]"
    ring = "-" if s.ring_members is None else f"{s.ring_members} ({_cell(s.ring_unhealthy)} unhealthy)"
    queues = ", ".join(f"{k} {v}" for k, v in s.queues.items()) or "-"
    return [s.kind, s.url, alive, ready, _cell(s.version), ring, queues, _cell(s.error)]


def render_table(statuses: Sequence[DaemonStatus], out: IO[str], width: int | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="kraken cluster status")
    for column in ("daemon", "address", "health", "readiness", "version", "ring", "queues", "error"):
        table.add_column(column, overflow="fold")
    for s in statuses:
        cells = _row(s)
        table.add_row(*[escape(c) if i in (1, 7) else c for i, c in enumerate(cells)])
    if width is None and not out.isatty():
        width = 160  # rich's 80 columns off a terminal would fold every URL
    console = Console(file=out, width=width, highlight=False)
    console.print(table)
    unhealthy = sum(1 for s in statuses if not s.healthy)
    console.print(f"{len(statuses) - unhealthy} of {len(statuses)} daemons healthy")


def targets_from(flags: Mapping[str, Sequence[str] | None]) -> list[Target]:
    """Targets from the command line's ``--origin``... lists, in the order of ``KINDS``."""
    found = []
    for kind in KINDS:
        for url in flags.get(kind) or ():
            found.append(Target(kind, url.rstrip("/")))
    return found


def http_client(reactor: Any, tls: Mapping[str, str]) -> tuple[Any, Any]:
    """A treq client (and its connection pool) verifying https:// daemons with ``tls`` (``ca``, ``cert``,
    ``key``); ValueError naming a file that cannot be used."""
    from kraken.net.client import HTTPClientConfig, make_http_client
    from kraken.net.tls import TLSConfig, TLSContexts

    config = TLSConfig(ca=tls.get("ca"), cert=tls.get("cert"), key=tls.get("key"))
    contexts = TLSContexts.from_config(config) if tls else None
    client, service = make_http_client(reactor, HTTPClientConfig(), tls=contexts)
    return client, service.pool


def run(targets: Sequence[Target], tls: Mapping[str, str], timeout: float, as_json: bool) -> int:
    """Probe ``targets`` on the reactor (``task.react``), print the table or JSON; the exit status."""
    from twisted.internet.task import react

    code: object = 1
    try:
        react(_probe_and_show, (targets, tls, timeout, as_json))
    except SystemExit as e:
        code = e.code
    return code if isinstance(code, int) else 1


async def _show(reactor: Any, targets: Sequence[Target], tls: Mapping[str, str], timeout: float, as_json: bool) -> int:
    try:
        client, pool = http_client(reactor, tls)
    except ValueError as e:
        print(f"kraken status: error: tls: {e}", file=sys.stderr)
        return 2
    try:
        statuses = await probe_all(client, targets, reactor, timeout)
    finally:
        await pool.closeCachedConnections()
    if as_json:
        render_json(statuses, sys.stdout)
    else:
        render_table(statuses, sys.stdout)
    return exit_code(statuses)


def _probe_and_show(reactor: Any, *args: Any) -> Deferred[None]:
    async def go() -> None:
        raise SystemExit(await _show(reactor, *args))

    return Deferred.fromCoroutine(go())
