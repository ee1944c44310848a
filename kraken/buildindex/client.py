"""The treq client of the build-index API (``kraken.buildindex.http``): one node (``BuildIndexClient``) or several
(``BuildIndexes``, failing over between them through ``kraken.cluster.services``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import attrs
from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kraken.cluster.services import MemberClients, ServiceHosts
from kraken.core import Digest, DigestError
from kraken.net import HTTPClientConfig, HTTPStatusError
from kraken.net.service import ServiceClient, name_path
from kraken.registry.source import ManifestRecord, Page

T = TypeVar("T")
log = Logger()


class Refused(Exception):
    """The build-index refused a write (400): ``missing`` lists the digests
    the origin lacks (empty when the request itself was bad)."""

    def __init__(self, message: str, missing: list[Digest] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.missing: list[Digest] = list(missing or [])


class TagRefused(Refused):
    """``put_tag`` refused: the manifest or something it references is not
    on the origin, the manifest is invalid, or the request was bad."""


class ManifestRefused(Refused):
    """``put_manifest`` refused: the manifest blob is not on the origin, or
    the record does not match it."""


def _segment(text: str) -> str:
    return quote(text, safe=":")


def _refusal(body: bytes) -> tuple[str, list[Digest]]:
    try:
        doc = json.loads(body)
        message = str(doc.get("error", "refused"))
        raw = doc.get("missing") or []
    except (ValueError, AttributeError):
        return body.decode("utf-8", "replace")[:500] or "refused", []
    missing = []
    for item in raw if isinstance(raw, list) else []:
        try:
            missing.append(Digest.parse(item))
        except DigestError:
            pass
    return message, missing


@attrs.frozen
class BuildIndexClient(ServiceClient):
    """Talks to one build-index. ``base`` is like ``http://127.0.0.1:15004``.

    Unexpected statuses raise ``HTTPStatusError``. Every call is idempotent,
    so every call is retried on network errors and 429/502/503/504
    (``kraken.net.with_retries``).
    """

    # -- URLs --

    def _repo_url(self, repo: str, *rest: str) -> str:
        return "/".join([f"{self._base}/repositories/{name_path(repo)}", *rest])

    def _json(self, method: str, url: str, body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            raise HTTPStatusError(method, url, 200, b"not JSON: " + body[:200]) from None

    # -- the API --

    async def health(self) -> bool:
        """True if the build-index answers ``GET /health`` with 200."""
        url = f"{self._base}/health"
        try:
            code, _ = await self._call("GET", url, frozenset({200}))
        except Exception as e:
            log.debug("health check of {url} failed: {error}", url=url, error=str(e))
            return False
        return code == 200

    async def put_tag(self, repo: str, tag: str, digest: Digest) -> None:
        """Point ``repo:tag`` at ``digest``. Raises ``TagRefused`` if the
        build-index refuses it (its ``missing`` lists what the origin lacks)."""
        url = self._repo_url(repo, "tags", _segment(tag))
        code, body = await self._retrying(
            f"put tag {repo}:{tag}",
            lambda: self._call(
                "PUT", url, frozenset({200, 201, 400}), data=str(digest).encode("ascii"),
                headers={b"Content-Type": [b"text/plain"]},
            ),
        )  # fmt: skip
        if code == 400:
            raise TagRefused(*_refusal(body))

    async def duplicate_tag(self, repo: str, tag: str, digest: Digest, *, delay: float) -> None:
        """Give ``repo:tag`` -> ``digest`` to this (other) build-index as a
        duplicate: it stores the tag without checking it and queues its own
        write-back after ``delay`` seconds (a write-back that leaves a tag
        the backend already has alone)."""
        await self._internal_tag_put("duplicate", repo, tag, {"digest": str(digest), "delay": delay})

    async def replicate_tag(self, repo: str, tag: str, digest: Digest, *, source: str) -> None:
        """Give ``repo:tag`` -> ``digest`` to this build-index of another cluster as a replicated tag
        from ``source``: it checks it against its own origins, stores it marked as received, copies it
        to its nodes and never sends it to remotes. Raises ``TagRefused`` when it refuses."""
        await self._internal_tag_put("remote", repo, tag, {"digest": str(digest), "source": source})

    async def _internal_tag_put(self, route: str, repo: str, tag: str, doc: dict[str, Any]) -> None:
        """PUT ``doc`` to ``/internal/<route>/repositories/<repo>/tags/<tag>``; ``TagRefused`` on 400."""
        url = "/".join([f"{self._base}/internal/{route}/repositories/{name_path(repo)}", "tags", _segment(tag)])
        body = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        code, answer = await self._retrying(
            f"{route} tag {repo}:{tag}",
            lambda: self._call(
                "PUT", url, frozenset({200, 201, 400}), data=body, headers={b"Content-Type": [b"application/json"]}
            ),
        )
        if code == 400:
            raise TagRefused(*_refusal(answer))
        if answer.strip() != doc["digest"].encode("ascii"):  # a build-index stored it and says so
            raise HTTPStatusError("PUT", url, code, b"the answer is not the tag's digest: " + answer[:100])

    async def get_tag(self, repo: str, tag: str) -> Digest | None:
        url = self._repo_url(repo, "tags", _segment(tag))
        code, body = await self._retrying(
            f"get tag {repo}:{tag}", lambda: self._call("GET", url, frozenset({200, 404}))
        )
        if code == 404:
            return None
        try:
            return Digest.parse(body.decode("ascii").strip())
        except (UnicodeDecodeError, DigestError):
            raise HTTPStatusError("GET", url, code, b"not a digest: " + body[:200]) from None

    async def list_tags(self, repo: str, n: int | None, last: str | None) -> Page | None:
        """Tags of ``repo`` sorted, after ``last``, at most ``n`` (the server
        caps it); None if the repository is unknown."""
        url = self._repo_url(repo, "tags")
        doc = await self._list(url, n, last, f"list tags of {repo}")
        return None if doc is None else self._page(url, doc, "tags")

    async def list_repositories(self, n: int | None, last: str | None) -> Page:
        url = f"{self._base}/repositories"
        doc = await self._list(url, n, last, "list repositories")
        if doc is None:
            raise HTTPStatusError("GET", url, 404)
        return self._page(url, doc, "repositories")

    async def _list(self, url: str, n: int | None, last: str | None, what: str) -> Any:
        params: dict[str, str] = {}
        if n is not None:
            params["n"] = str(n)
        if last is not None:
            params["last"] = last
        code, body = await self._retrying(
            what, lambda: self._call("GET", url, frozenset({200, 404}), self._config.max_body, params=params)
        )
        return None if code == 404 else self._json("GET", url, body)

    def _page(self, url: str, doc: Any, key: str) -> Page:
        items = doc.get(key) if isinstance(doc, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise HTTPStatusError("GET", url, 200, f"no {key} list".encode())
        return Page(tuple(items), bool(doc.get("more", False)))

    async def put_manifest(self, repo: str, record: ManifestRecord) -> None:
        """Record manifest ``record.digest`` in ``repo``. Raises
        ``ManifestRefused`` if the manifest blob is not on the origin or the
        record is refused."""
        url = self._repo_url(repo, "manifests", _segment(str(record.digest)))
        body = json.dumps(record.to_json(), separators=(",", ":")).encode("utf-8")
        code, answer = await self._retrying(
            f"put manifest {record.digest}",
            lambda: self._call(
                "PUT", url, frozenset({200, 201, 400}), data=body, headers={b"Content-Type": [b"application/json"]}
            ),
        )
        if code == 400:
            raise ManifestRefused(*_refusal(answer))

    async def get_manifest(self, repo: str, digest: Digest) -> ManifestRecord | None:
        url = self._repo_url(repo, "manifests", _segment(str(digest)))
        code, body = await self._retrying(
            f"get manifest {digest}", lambda: self._call("GET", url, frozenset({200, 404}))
        )
        if code == 404:
            return None
        return self._record(url, self._json("GET", url, body))

    async def referrers(self, repo: str, subject: Digest) -> list[ManifestRecord]:
        """Manifest records in ``repo`` whose subject is ``subject``."""
        url = self._repo_url(repo, "referrers", _segment(str(subject)))
        _, body = await self._retrying(
            f"referrers of {subject}",
            lambda: self._call("GET", url, frozenset({200}), self._config.max_body),
        )
        doc = self._json("GET", url, body)
        items = doc.get("manifests") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise HTTPStatusError("GET", url, 200, b"no manifests list")
        return [self._record(url, item) for item in items]

    def _record(self, url: str, doc: Any) -> ManifestRecord:
        try:
            return ManifestRecord.from_json(doc)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise HTTPStatusError("GET", url, 200, f"bad manifest record: {e}".encode()) from None


class BuildIndexes(MemberClients[BuildIndexClient]):
    """Talks to several build-index nodes (one ``ServiceHosts``), failing over between them.

    The calls of ``BuildIndexClient`` (but ``duplicate_tag``, which is meant
    for one node); ``health`` is true if any node answers. Every call about a repository goes to the first node for
    its name (every proxy and agent picks the same one, so a tag read right
    after its push asks the node that took it); a node that fails
    (unreachable, 429 or 5xx) is left for the next and tried after the others
    for ``down_for`` seconds.

    Writes fail over too: a tag PUT or manifest PUT carries the whole new
    state (``repo:tag`` -> this digest; this record), so sending it again,
    to the same node or another, leaves the same state, even when the first
    node stored it before it died. The nodes copy accepted tags to each other
    (``cluster.nodes``), which is what makes a tag taken by one node readable
    on the next.
    """

    def __init__(self, hosts: ServiceHosts, *, http: HTTPClient, clock: IReactorTime, config: HTTPClientConfig) -> None:
        once = attrs.evolve(config, retries=0)
        super().__init__(hosts, lambda base: BuildIndexClient(http=http, base=base, clock=clock, config=once))

    def _on(self, what: str, repo: str, call: Callable[[BuildIndexClient], Awaitable[T]]) -> Awaitable[T]:
        return self.hosts.call(what, repo.encode("utf-8"), lambda base: call(self.client(base)), repository=repo)

    async def put_tag(self, repo: str, tag: str, digest: Digest) -> None:
        await self._on(f"put tag {repo}:{tag}", repo, lambda c: c.put_tag(repo, tag, digest))

    async def get_tag(self, repo: str, tag: str) -> Digest | None:
        return await self._on(f"get tag {repo}:{tag}", repo, lambda c: c.get_tag(repo, tag))

    async def list_tags(self, repo: str, n: int | None, last: str | None) -> Page | None:
        return await self._on(f"list tags of {repo}", repo, lambda c: c.list_tags(repo, n, last))

    async def list_repositories(self, n: int | None, last: str | None) -> Page:
        return await self._on("list repositories", "", lambda c: c.list_repositories(n, last))

    async def put_manifest(self, repo: str, record: ManifestRecord) -> None:
        await self._on(f"put manifest {record.digest}", repo, lambda c: c.put_manifest(repo, record))

    async def get_manifest(self, repo: str, digest: Digest) -> ManifestRecord | None:
        return await self._on(f"get manifest {digest}", repo, lambda c: c.get_manifest(repo, digest))

    async def referrers(self, repo: str, subject: Digest) -> list[ManifestRecord]:
        return await self._on(f"referrers of {subject}", repo, lambda c: c.referrers(repo, subject))
