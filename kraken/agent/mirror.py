"""The agent's registry as a containerd mirror: ``?ns=<registry host>`` on every route.

containerd adds ``?ns=<host>`` (``docker.io``, ``ghcr.io``, ``127.0.0.1:5000``) to every request it sends to a
mirror whose host differs from the image's registry; the OCI spec says a proxy SHOULD echo it as
``OCI-Namespace``. ``Namespaced`` wraps the registry resource: a valid ``ns`` (a host name or IP literal with an
optional port) is echoed; a malformed one, or several, is 400 NAME_INVALID in OCI error JSON before any handler
runs. The agent serves what was pushed through the Kraken proxy under the repository name alone, whatever
registry ``ns`` names, so a ``_default`` hosts.toml that sends every registry through the agent works: what
the agent cannot serve is a fast 404 and containerd goes on to the registry itself. An ``ns`` that matches
the agent's ``upstream_namespaces`` is different: the request is served from the repository
``<host>/<repo>`` the cluster reads from that upstream registry (``kraken.agent.upstreams``).

Each answer of 404 or 5xx to a request that carried ``ns`` is logged at info level ("the client tries its next
host"), so an operator sees the mirror's misses; a client that closes the connection early (containerd 2.x
parallel range downloads do) is logged at debug level only: it is normal, not an error.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from kraken.agent.upstreams import UpstreamNamespaces
from kraken.registry.errors import JSON_CONTENT_TYPE, NameInvalid
from kraken.registry.http import API_VERSION
from kraken.registry.messages import text

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^(?:{_LABEL})(?:\.{_LABEL})*$")
_PORT = re.compile(r"^[0-9]{1,5}$")
MAX_NS = 255


def valid_namespace(ns: str) -> bool:
    """Whether ``ns`` is a registry host as containerd sends it: ``name[:port]``, ``ipv4[:port]`` or
    ``[ipv6][:port]``, at most 255 characters, the port 1 to 65535."""
    if not ns or len(ns) > MAX_NS:
        return False
    if ns.startswith("["):
        literal, _, rest = ns[1:].partition("]")
        if rest and not rest.startswith(":"):
            return False
        port = rest[1:] if rest else None
        try:
            ok = ipaddress.ip_address(literal).version == 6
        except ValueError:
            return False
        return ok and (port is None or _valid_port(port))
    host, colon, port = ns.partition(":")
    if colon and not _valid_port(port):
        return False
    return bool(_HOST.match(host))


def _valid_port(port: str) -> bool:
    return bool(_PORT.match(port)) and 0 < int(port) < 65536


class Namespaced(Resource):
    """``inner`` (a leaf resource: Klein's) behind the ``ns`` check and echo."""

    isLeaf = True
    log = Logger()

    def __init__(self, inner: IResource, upstreams: UpstreamNamespaces | None = None) -> None:
        super().__init__()
        self._inner = inner
        self._upstreams = upstreams

    def render(self, request: Request) -> Any:
        values = request.args.get(b"ns") if request.args else None
        if not values:
            return self._inner.render(request)
        ns = values[0].decode("utf-8", "replace")
        if len(values) > 1 or not valid_namespace(ns):
            return _bad_namespace(request, values)
        request.setHeader(b"oci-namespace", ns.encode())
        if self._upstreams:
            self._upstreams.rewrite(request, ns)
        request.notifyFinish().addCallbacks(
            self._finished, self._closed_early, callbackArgs=(request, ns), errbackArgs=(request, ns)
        )
        return self._inner.render(request)

    def _finished(self, _: None, request: Request, ns: str) -> None:
        code = request.code
        if code == 404 or code >= 500:
            self.log.info(
                "answered {status} to {method} {path} for {namespace}: the client tries its next host",
                status=code,
                method=text(request.method),
                path=text(request.path),
                namespace=ns,
            )

    def _closed_early(self, failure: Failure, request: IRequest, ns: str) -> None:
        self.log.debug(
            "{method} {path} for {namespace}: the client closed the connection early ({reason})",
            method=text(request.method),
            path=text(request.path),
            namespace=ns,
            reason=failure.getErrorMessage(),
        )


def _bad_namespace(request: IRequest, values: list[bytes]) -> bytes:
    shown = [v.decode("utf-8", "replace")[:300] for v in values]
    error = NameInvalid(
        "ns must be one registry host, host[:port] (as containerd sends it)",
        detail={"ns": shown if len(shown) > 1 else shown[0]},
        status=400,
    )
    body = error.body()
    request.setResponseCode(error.status)
    request.setHeader(b"content-type", JSON_CONTENT_TYPE)
    request.setHeader(b"docker-distribution-api-version", API_VERSION)
    request.setHeader(b"content-length", b"%d" % len(body))
    return body
