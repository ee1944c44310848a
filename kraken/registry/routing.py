"""Which registry API endpoint a request path names, and which methods it takes.

Pure: no I/O, no Twisted. The registry has its own small router instead of
Klein/werkzeug routes with a ``<path:name>`` converter, because repository
names contain slashes *and* may end in words the API itself uses: in
``/v2/a/blobs/uploads/blobs/d`` the repository is ``a/blobs/uploads``, and a
left-to-right matcher that stops at the first ``blobs`` gets it wrong. So
``match_route`` dispatches on the path's *suffix*, the way distribution's
anchored regular expressions do: ``<name>/tags/list``,
``<name>/manifests/<ref>``, ``<name>/blobs/uploads/[<uid>]``,
``<name>/blobs/<digest>``, ``<name>/referrers/<digest>``, plus ``/v2/`` and
``/v2/_catalog``. Matching on the raw request path also makes the resource
work whether it is the site root or a child of another one.

The name is returned unvalidated (``kraken.registry.names.check_name`` does
that), with a percent-encoded slash kept encoded so that it cannot build a
valid name.
"""

from __future__ import annotations

from urllib.parse import unquote

import attrs

READ_METHODS = (b"GET", b"HEAD")
WRITE_METHODS = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})

#: The methods each kind of route answers, in the order ``Allow`` lists them.
ALLOWED: dict[str, tuple[bytes, ...]] = {
    "base": READ_METHODS,
    "catalog": READ_METHODS,
    "tags": READ_METHODS,
    "referrers": READ_METHODS,
    "manifest": (*READ_METHODS, b"PUT", b"DELETE"),
    "blob": (*READ_METHODS, b"DELETE"),
    "upload_start": (b"POST",),
    "upload": (*READ_METHODS, b"PATCH", b"PUT", b"DELETE"),
}

#: Routes outside any repository.
_UNNAMED = frozenset({"base", "catalog"})


@attrs.frozen
class Route:
    """What a request path names. ``kind`` is one of ``base``, ``catalog``,
    ``tags``, ``manifest``, ``blob``, ``upload_start``, ``upload``,
    ``referrers``; ``name`` is the (unvalidated) repository, ``arg`` the
    reference, digest or upload id."""

    kind: str
    name: str = ""
    arg: str = ""

    @property
    def has_name(self) -> bool:
        """Whether the route is inside a repository (its ``name`` must be checked)."""
        return self.kind not in _UNNAMED

    @property
    def allowed(self) -> tuple[bytes, ...]:
        """The methods this route answers."""
        return ALLOWED[self.kind]


def match_route(path: bytes) -> Route | None:
    """The route a raw (percent-encoded) request path names, or None."""
    if not path.startswith(b"/v2"):
        return None
    rest = path[3:]
    if rest in (b"", b"/"):
        return Route("base")
    if not rest.startswith(b"/"):
        return None
    segs = [unquote(s, errors="replace") for s in rest[1:].decode("latin-1").split("/")]
    if segs == ["_catalog"]:
        return Route("catalog")
    return _repository_route(segs)


def _repository_route(segs: list[str]) -> Route | None:
    n = len(segs)

    def name(k: int) -> str:
        # A percent-encoded slash inside a segment must not build a valid
        # name: keep it encoded, so name validation refuses it.
        return "/".join(p.replace("/", "%2F") for p in segs[: n - k])

    if n >= 3 and segs[-2:] == ["tags", "list"]:
        return Route("tags", name(2))
    if n >= 3 and segs[-2] == "manifests":
        return Route("manifest", name(2), segs[-1])
    if n >= 4 and segs[-3:-1] == ["blobs", "uploads"]:
        if segs[-1] == "":
            return Route("upload_start", name(3))
        return Route("upload", name(3), segs[-1])
    if n >= 3 and segs[-2:] == ["blobs", "uploads"]:
        return Route("upload_start", name(2))
    if n >= 3 and segs[-2] == "blobs":
        return Route("blob", name(2), segs[-1])
    if n >= 3 and segs[-2] == "referrers":
        return Route("referrers", name(2), segs[-1])
    return None


#: Each kind of route as a template: the bounded ``route`` label of the HTTP metrics.
TEMPLATES: dict[str, str] = {
    "base": "/v2/",
    "catalog": "/v2/_catalog",
    "tags": "/v2/<name>/tags/list",
    "referrers": "/v2/<name>/referrers/<digest>",
    "manifest": "/v2/<name>/manifests/<reference>",
    "blob": "/v2/<name>/blobs/<digest>",
    "upload_start": "/v2/<name>/blobs/uploads/",
    "upload": "/v2/<name>/blobs/uploads/<uuid>",
}


def route_template(path: bytes) -> str | None:
    """The template of the route ``path`` names (``/v2/<name>/blobs/<digest>``...), or None."""
    route = match_route(path)
    return None if route is None else TEMPLATES[route.kind]
