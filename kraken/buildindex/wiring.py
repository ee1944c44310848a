"""How ``tap.py`` builds the replication to remote clusters (``remotes``): one HTTP client pool per
remote, with that remote's TLS (its own CA, a client certificate it accepts; without a ``tls`` block
of its own, the daemon's), its origins and build-indexes, and the ``Replicator`` over the outbox."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService

from kraken.buildindex.client import BuildIndexClient
from kraken.buildindex.config import BuildIndexConfig, RemoteConfig
from kraken.buildindex.outbox import REMOTE
from kraken.buildindex.remotes import Remote, Replicator
from kraken.buildindex.tags import TagStore
from kraken.net import make_http_client
from kraken.net.tls import TLSContexts
from kraken.origin.client import ClusterClient, origin_urls
from kraken.throttle import TokenBucket, Unlimited
from kraken.workers import Worker

#: The smallest burst of a remote's ``rate`` (a second's worth when larger).
BURST = 1 << 20


def _remote(config: BuildIndexConfig, remote: RemoteConfig, reactor: Any, parent: MultiService, **kw: Any) -> Remote:
    own = TLSContexts.from_config(remote.tls) if remote.tls.configured else kw["tls"]
    http, pool = make_http_client(reactor, config.http_client, tls=own)
    pool.setName(f"http-client-remote-{remote.name}")
    pool.setServiceParent(parent)
    clients = [
        BuildIndexClient(http=http, base=url, clock=reactor, config=config.http_client) for url in remote.build_indexes
    ]
    origin = ClusterClient(
        http=http, origins=origin_urls(remote.origins), clock=reactor, config=config.http_client, worker=kw["worker"]
    )
    bucket = Unlimited() if remote.rate is None else TokenBucket(remote.rate, max(remote.rate, BURST), clock=reactor)
    return Remote(remote, clients, origin, bucket)


def build_replicator(
    config: BuildIndexConfig,
    reactor: Any,
    parent: MultiService,
    tags: TagStore,
    origin: ClusterClient,
    *,
    worker: Worker,
    tls: TLSContexts | None,
) -> Replicator:
    """The replicator of ``config.remotes`` (their client pools added to ``parent``)."""
    remotes = [_remote(config, r, reactor, parent, tls=tls, worker=worker) for r in config.remotes]
    source = config.cluster.self_url(config.listen_http) or "unknown"
    return Replicator(
        remotes, tags.outbox(REMOTE), tags, origin, source=source, clock=reactor,
        max_manifest_size=config.max_manifest_size, concurrency=config.replication.concurrency,
        backoff_min=config.replication.backoff_min, backoff_max=config.replication.backoff_max,
        body_timeout=config.http_client.timeout, report_interval=config.replication.report_interval,
    )  # fmt: skip
