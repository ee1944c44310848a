"""``twistd kraken-origin``: options and the composition root.

This is the only origin module that may import the global reactor, and only
inside ``makeService`` when no reactor is given.
"""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from kraken import config as kconfig
from kraken.net import make_http_client
from kraken.net.server import make_site
from kraken.origin.config import OriginConfig
from kraken.origin.http import OriginHTTP
from kraken.store import CAStore, ThreadPoolService, ThreadWorker

log = Logger(namespace="kraken.origin")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run a Kraken origin: the seeder and content-addressed blob store."
    optParameters = [
        ["config", "c", None, "YAML config file (supports extends:); built-in defaults when omitted"],
    ]

    def postOptions(self) -> None:
        path = self["config"]
        try:
            loaded = kconfig.load(path) if path is not None else kconfig.from_mapping({})
            parsed = kconfig.build(OriginConfig, loaded)
        except kconfig.ConfigError as e:
            raise usage.UsageError(str(e)) from None
        try:
            # Parse only (the standard parsers do not touch the reactor), so a
            # bad endpoint is a usage error rather than a traceback later.
            endpoints.serverFromString(None, parsed.listen_http)
        except Exception as e:
            raise usage.UsageError(f"{path or '<defaults>'}: listen_http: {e}") from None
        self["parsed"] = parsed


class ExpireUploads:
    """The TimerService callable: never raises, so the timer keeps running.

    TimerService calls at once on start; that first call is skipped, so the
    first sweep runs one interval after startup and starting the service does
    no disk work (nor any thread hand-off a test reactor would have to carry).
    """

    def __init__(self, store: CAStore, clock: Any, ttl: float) -> None:
        self._store = store
        self._clock = clock
        self._ttl = ttl
        self._skip = True

    def __call__(self) -> Deferred[None] | None:
        if self._skip:
            self._skip = False
            return None
        return Deferred.fromCoroutine(self._expire())

    async def _expire(self) -> None:
        try:
            expired = await self._store.uploads.expire(self._clock.seconds(), self._ttl)
        except Exception:
            log.failure("expiring stale uploads failed")
            return
        if expired:
            log.info("expired {count} stale uploads", count=len(expired))


class _AnnounceListening(Service):
    """Logs "origin listening" once the HTTP port is bound."""

    def __init__(self, http: StreamServerEndpointService, config: OriginConfig) -> None:
        self._http = http
        self._config = config

    def startService(self) -> None:
        super().startService()
        waiting = getattr(self._http, "_waitingForPort", None)
        if waiting is not None:
            waiting.addCallback(self._announce)

    def _announce(self, port: Any) -> Any:
        if port is None:  # listening failed; the listener service has logged why
            return port
        host = port.getHost()
        address = f"{getattr(host, 'host', '')}:{getattr(host, 'port', '')}" if hasattr(host, "port") else str(host)
        log.info(
            "origin listening on {address} ({endpoint}), advertised as {advertise}",
            address=address,
            port=getattr(host, "port", None),
            endpoint=self._config.listen_http,
            advertise=self._config.advertised(),
            root=self._config.store.root,
        )
        return port


def origin_service(config: OriginConfig, reactor: Any) -> MultiService:
    """Everything one origin needs, as a MultiService (the herd composes it).

    Children start in this order and stop in reverse: thread pools, HTTP
    client pool, upload expiry, then the HTTP listener.
    """
    top = MultiService()
    top.setName("origin")

    cpu = ThreadPoolService("cpu", 1, config.threads.cpu)  # hashing (pieces, P2P) as it lands
    io = ThreadPoolService("io", 1, config.threads.io)
    cpu.setServiceParent(top)
    io.setServiceParent(top)

    store = CAStore(
        config.store.root,
        worker=ThreadWorker(reactor, io.pool),
        piece_rule=config.store.piece_rule(),
        now=reactor.seconds,
    )

    _client, client_service = make_http_client(reactor, config.http_client)  # replication will use the client
    client_service.setServiceParent(top)

    expiry = TimerService(config.upload_sweep_interval(), ExpireUploads(store, reactor, config.upload_ttl))
    expiry.clock = reactor
    expiry.setName("upload-expiry")
    expiry.setServiceParent(top)

    app = OriginHTTP(store, clock=reactor, advertise=config.advertised())
    site = make_site(app.resource(), reactor=reactor)
    http = strports.service(config.listen_http, site, reactor=reactor)
    http.setName("http")
    http.setServiceParent(top)
    _AnnounceListening(http, config).setServiceParent(top)
    return top


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return origin_service(options["parsed"], reactor)
