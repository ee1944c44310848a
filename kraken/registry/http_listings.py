"""The listing endpoints: ``/v2/<name>/tags/list`` and ``/v2/_catalog``
(sorted, paginated with ``n`` and ``last``, capped at ``max_page_size``, a
``Link: <...>; rel="next"`` while more follow), and the OCI referrers API,
``/v2/<name>/referrers/<digest>`` (an image index, filtered by
``?artifactType=``).
"""

from __future__ import annotations

from urllib.parse import quote

from twisted.web.iweb import IRequest

from kraken.registry.errors import NameUnknown
from kraken.registry.manifests import OCI_INDEX
from kraken.registry.messages import arg, json_body
from kraken.registry.names import parse_digest, parse_pagination
from kraken.registry.source import IRegistrySource


class ListingHandlers:
    """Tags, repositories and referrers, as the ``IRegistrySource`` lists them."""

    def __init__(self, source: IRegistrySource, *, max_page_size: int) -> None:
        self._source = source
        self._max_page_size = max_page_size

    async def tags(self, request: IRequest, name: str, _: str = "") -> bytes:
        n, last = parse_pagination(request.args, self._max_page_size)
        size = self._max_page_size if n is None else n
        page = await self._source.list_tags(name, size, last)
        if page is None:
            raise NameUnknown(detail={"name": name})
        tags = [] if size == 0 else sorted(page.items)
        if size and page.more and tags:
            _link_next(request, f"/v2/{name}/tags/list", size, tags[-1])
        return json_body(request, {"name": name, "tags": tags})

    async def catalog(self, request: IRequest, _name: str = "", _arg: str = "") -> bytes:
        n, last = parse_pagination(request.args, self._max_page_size, catalog=True)
        size = self._max_page_size if n is None else n
        repos: list[str] = []
        if size:
            page = await self._source.list_repositories(size, last)
            repos = sorted(page.items)
            if page.more and repos:
                _link_next(request, "/v2/_catalog", size, repos[-1])
        return json_body(request, {"repositories": repos})

    async def referrers(self, request: IRequest, name: str, digest_text: str) -> bytes:
        subject = parse_digest(digest_text)
        records = await self._source.referrers(name, subject)
        artifact_type = arg(request, b"artifactType")
        if artifact_type:
            records = [r for r in records if r.artifact_type == artifact_type]
            request.setHeader(b"oci-filters-applied", b"artifactType")
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [r.descriptor() for r in records]}
        return json_body(request, index, OCI_INDEX.encode())


def _link_next(request: IRequest, path: str, n: int, last: str) -> None:
    url = f"{path}?n={n}&last={quote(last, safe='/')}"
    request.setHeader(b"link", f'<{url}>; rel="next"'.encode())
