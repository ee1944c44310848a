"""The treq client of the tracker API (``kraken.tracker.http``): one tracker (``TrackerClient``) or several
(``Trackers``, failing over between them through ``kraken.cluster.services``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kraken.cluster.services import MemberClients, ServiceHosts
from kraken.core import Digest, MetaInfo, MetaInfoError
from kraken.core.peer import PeerError, PeerInfo
from kraken.net import HTTPClientConfig, HTTPStatusError
from kraken.net.service import ServiceClient, name_path

T = TypeVar("T")
#: The most peer ids one announce reports as unreachable.
MAX_UNREACHABLE = 50
log = Logger()


@attrs.frozen
class TrackerClient(ServiceClient):
    """Talks to one tracker. ``base`` is like ``http://127.0.0.1:15003``.

    Unexpected statuses raise ``HTTPStatusError``. Every call is idempotent
    (an announce is an upsert), so every call is retried on network errors
    and 429/502/503/504 (``kraken.net.with_retries``).
    """

    # -- the API --

    async def health(self) -> bool:
        """True if the tracker answers ``GET /health`` with 200."""
        url = f"{self._base}/health"
        try:
            code, _ = await self._call("GET", url, frozenset({200}))
        except CancelledError:
            raise
        except Exception as e:
            log.debug("health check of {url} failed: {error}", url=url, error=str(e))
            return False
        return code == 200

    async def announce(
        self,
        peer: PeerInfo,
        namespace: str,
        digest: Digest,
        info_hash: str,
        /,
        *,
        unreachable: Sequence[str] = (),
        progress: Mapping[str, Any] | None = None,
    ) -> tuple[list[PeerInfo], float]:
        """Announce ``peer`` for the blob; returns (peers to connect to, seconds until the next announce).

        ``unreachable``: peer ids (hex) this peer failed to reach for the blob since its last announce; sent as
        the body's ``unreachable`` list (the first ``MAX_UNREACHABLE``), and only when there are any.
        ``progress``: the body's ``progress`` object (``kraken.tracker.progress``), sent when given."""
        url = f"{self._base}/announce"
        doc: dict[str, object] = {
            "peer_id": peer.peer_id, "ip": peer.ip, "port": peer.port, "namespace": namespace,
            "digest": str(digest), "info_hash": info_hash, "complete": peer.complete,
        }  # fmt: skip
        if unreachable:
            doc["unreachable"] = list(unreachable[:MAX_UNREACHABLE])
        if progress is not None:
            doc["progress"] = progress
        body = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        _, answer = await self._retrying(
            f"announce {info_hash}",
            lambda: self._call(
                "POST", url, frozenset({200}), data=body, headers={b"Content-Type": [b"application/json"]}
            ),
        )
        try:
            reply = json.loads(answer)
            peers = [PeerInfo.from_json(p) for p in reply["peers"]]
            interval = reply["interval"]
            if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
                raise ValueError(f"bad interval {interval!r}")
        except (ValueError, KeyError, TypeError, PeerError) as e:
            raise HTTPStatusError("POST", url, 200, f"bad announce answer: {e}".encode()) from None
        return peers, float(interval)

    async def metainfo(self, namespace: str, digest: Digest) -> MetaInfo | None:
        """The blob's metainfo (from the origins, through the tracker), or None if no origin has it."""
        url = f"{self._base}/namespace/{name_path(namespace)}/blobs/{digest}/metainfo"
        code, body = await self._retrying(f"metainfo {digest}", lambda: self._call("GET", url, frozenset({200, 404})))
        if code == 404:
            return None
        try:
            info = MetaInfo.from_json(body)
        except MetaInfoError as e:
            raise HTTPStatusError("GET", url, 200, f"bad metainfo: {e}".encode()) from None
        if info.digest != digest:
            raise HTTPStatusError("GET", url, 200, f"metainfo is for {info.digest}".encode())
        return info


class Trackers(MemberClients[TrackerClient]):
    """Talks to several trackers (one ``ServiceHosts``), failing over between them.

    The calls of ``TrackerClient``; ``health`` is true if any tracker
    answers. Announces and metainfo of one blob go to the first tracker for
    its digest (every agent picks the same one, so a swarm meets on one
    tracker); one that fails (unreachable, 429 or 5xx) is left for the next
    and tried after the others for ``down_for`` seconds. Each tracker gets
    one attempt per round; rounds repeat with the ``http_client`` backoff,
    as a single client's retries do.
    """

    def __init__(self, hosts: ServiceHosts, *, http: HTTPClient, clock: IReactorTime, config: HTTPClientConfig) -> None:
        once = attrs.evolve(config, retries=0)
        super().__init__(hosts, lambda base: TrackerClient(http=http, base=base, clock=clock, config=once))

    async def announce(
        self,
        peer: PeerInfo,
        namespace: str,
        digest: Digest,
        info_hash: str,
        /,
        *,
        unreachable: Sequence[str] = (),
        progress: Mapping[str, Any] | None = None,
    ) -> tuple[list[PeerInfo], float]:
        """``TrackerClient.announce`` on the first tracker for the blob that answers."""
        return await self.hosts.call(
            f"announce {info_hash}",
            digest.hex.encode("ascii"),
            lambda base: self.client(base).announce(
                peer, namespace, digest, info_hash, unreachable=unreachable, progress=progress
            ),
            digest=str(digest),
        )

    async def metainfo(self, namespace: str, digest: Digest) -> MetaInfo | None:
        """``TrackerClient.metainfo`` on the first tracker for the blob that answers."""
        return await self.hosts.call(
            f"metainfo {digest}",
            digest.hex.encode("ascii"),
            lambda base: self.client(base).metainfo(namespace, digest),
            digest=str(digest),
        )
