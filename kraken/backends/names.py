"""Name pathers: where a backend stores a name, and which name a stored path holds.

Object stores and file trees written by kraken use docker/distribution's
storage layout, so a bucket (or directory) written by a Docker registry can be
read by kraken and the other way round. The facts relied on, from
distribution/distribution ``registry/storage/paths.go`` and its storage
drivers, and from uber/kraken ``lib/backend/namepath/pather.go``:

- distribution's path mapper puts everything under ``/docker/registry/v2``.
- A blob's bytes live at ``/docker/registry/v2/blobs/<algorithm>/<first two hex
  characters>/<hex>/data`` (``blobDataPathSpec``; ``digestPathComponents`` with
  ``multilevel``); for sha256, ``blobs/sha256/ab/abcd.../data``.
- A tag is the file ``/docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link``
  (``manifestTagCurrentPathSpec``); ``<name>`` may contain slashes
  (``library/ubuntu``). A link file holds the digest as text,
  ``sha256:<hex>``, with no newline. (Next to ``current/`` distribution also
  keeps ``index/sha256/<hex>/link`` per tag; a reader of tags ignores it.)
- A storage driver prefixes these paths with its root directory: the
  filesystem driver joins its ``rootdirectory`` (default
  ``/var/lib/registry``); the S3 driver's key is
  ``TrimLeft(TrimRight(rootdirectory, "/") + path, "/")``, so with no root
  directory the keys start ``docker/registry/v2/`` with no leading slash.
- Kraken's pathers: ``identity`` is ``root/name``; ``sharded_docker_blob``
  takes a blob's hex digest and maps back to the bare hex;
  ``docker_tag`` takes ``repo:tag`` (exactly one colon) and maps back to it.

So a pather's ``root`` plays the driver's root directory: ``""`` (or ``"/"``)
gives ``docker/registry/v2/...`` keys as distribution's S3 driver writes them
with no root directory; the filesystem backend uses root ``""`` and joins the
result under its own directory, which is then a distribution ``rootdirectory``.

Paths use ``/`` whatever the platform. Every name is checked before it
becomes a path: no empty, ``.`` or ``..`` components, so a name can never
point outside the pather's base.
"""

from __future__ import annotations

import re
from typing import ClassVar, Protocol

import attrs

from kraken.backends.base import InvalidName
from kraken.core import Digest, DigestError
from kraken.core.digest import HEX_LENGTHS

_DOCKER_V2 = "docker/registry/v2"
_HEX_PREFIX = re.compile(r"[0-9a-f]*\Z")


class Pather(Protocol):
    """Turns names into storage paths and back."""

    @property
    def root(self) -> str: ...

    def base(self) -> str:
        """The path under which every name of this layout lives."""
        ...

    def path(self, name: str) -> str:
        """Where ``name`` is stored. Raises ``InvalidName``."""
        ...

    def name(self, path: str) -> str:
        """The name stored at ``path``. Raises ``InvalidName`` for a path that holds no name of this layout."""
        ...

    def list_prefix(self, prefix: str) -> str:
        """A path prefix that every name starting with ``prefix`` has (the
        caller still filters names by ``prefix``: the path prefix may be wider).
        Raises ``InvalidName``."""
        ...


def _join(root: str, rel: str) -> str:
    root = root.rstrip("/")
    return f"{root}/{rel}" if root else rel


def _check_components(text: str, what: str) -> None:
    if "\0" in text:
        raise InvalidName(f"{what} must not contain NUL: {text!r}")
    for part in text.split("/"):
        if part in ("", ".", ".."):
            raise InvalidName(f"{what} must be a relative path without empty, '.' or '..' parts: {text!r}")


def _check_prefix(prefix: str, what: str) -> None:
    """All but the last component must be whole, valid components."""
    if "\0" in prefix:
        raise InvalidName(f"{what} must not contain NUL: {prefix!r}")
    head, sep, _ = prefix.rpartition("/")
    if sep:
        _check_components(head, what)


def _strip_base(base: str, path: str) -> str | None:
    if not base:
        return path
    if path.startswith(base + "/"):
        return path[len(base) + 1 :]
    return None


@attrs.frozen
class IdentityPather:
    """``root/name``: any relative path is a name."""

    kind: ClassVar[str] = "identity"
    root: str = ""

    def base(self) -> str:
        return self.root.rstrip("/")

    def path(self, name: str) -> str:
        _check_components(name, "name")
        return _join(self.root, name)

    def name(self, path: str) -> str:
        rest = _strip_base(self.base(), path)
        if rest is None:
            raise InvalidName(f"{path!r} is not under {self.base()!r}")
        _check_components(rest, "name")
        return rest

    def list_prefix(self, prefix: str) -> str:
        _check_prefix(prefix, "list prefix")
        base = self.base()
        return f"{base}/{prefix}" if base else prefix


def blob_digest(name: str) -> Digest:
    """The digest a blob name holds: ``<algorithm>:<hex>``, or the hex alone (64 characters: sha256, 128:
    sha512). Raises ``InvalidName``."""
    try:
        return Digest.parse(name) if ":" in name else Digest(name)
    except DigestError:
        raise InvalidName(
            f"a blob name must be sha256:<64 hex>, sha512:<128 hex> or the lowercase hex alone, not {name!r}"
        ) from None


def blob_hex(name: str) -> str:
    """The hex of a blob name (see ``blob_digest``). Raises ``InvalidName``."""
    return blob_digest(name).hex


@attrs.frozen
class ShardedDockerBlobPather:
    """``root/docker/registry/v2/blobs/<algorithm>/<hex[:2]>/<hex>/data``. Names are
    ``<algorithm>:<hex>`` or ``<hex>``; stored paths map back to the bare hex (whose length tells sha256 from
    sha512), so a listing yields hex names and takes a hex prefix (of sha256 blobs)."""

    kind: ClassVar[str] = "sharded_docker_blob"
    root: str = ""

    def base(self) -> str:
        return _join(self.root, f"{_DOCKER_V2}/blobs")

    def path(self, name: str) -> str:
        digest = blob_digest(name)
        return f"{self.base()}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}/data"

    def name(self, path: str) -> str:
        rest = _strip_base(self.base(), path)
        parts = None if rest is None else rest.split("/")
        if parts is None or len(parts) != 4 or parts[0] not in HEX_LENGTHS or parts[3] != "data":
            raise InvalidName(f"{path!r} is not a sharded docker blob path under {self.base()!r}")
        shard, hex_ = parts[1], parts[2]
        if not _HEX_PREFIX.match(hex_) or len(hex_) != HEX_LENGTHS[parts[0]] or shard != hex_[:2]:
            raise InvalidName(f"{path!r} is not a sharded docker blob path under {self.base()!r}")
        return hex_

    def list_prefix(self, prefix: str) -> str:
        if not _HEX_PREFIX.match(prefix) or len(prefix) > 64:
            raise InvalidName(f"blobs are listed by a prefix of their hex digest, not {prefix!r}")
        shard = f"{prefix[:2]}/{prefix}" if len(prefix) >= 2 else prefix
        return f"{self.base()}/sha256/{shard}"


def split_tag(name: str) -> tuple[str, str]:
    """``repo:tag`` -> (repo, tag). Raises ``InvalidName``."""
    parts = name.split(":")
    if len(parts) != 2:
        raise InvalidName(f"a tag name must be 'repo:tag' with exactly one colon, not {name!r}")
    repo, tag = parts
    _check_components(repo, "repository")
    _check_components(tag, "tag")
    if "/" in tag:
        raise InvalidName(f"a tag must not contain '/': {name!r}")
    return repo, tag


@attrs.frozen
class DockerTagPather:
    """``root/docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/current/link``
    for the name ``repo:tag``."""

    kind: ClassVar[str] = "docker_tag"
    root: str = ""

    def base(self) -> str:
        return _join(self.root, f"{_DOCKER_V2}/repositories")

    def path(self, name: str) -> str:
        repo, tag = split_tag(name)
        return f"{self.base()}/{repo}/_manifests/tags/{tag}/current/link"

    def name(self, path: str) -> str:
        rest = _strip_base(self.base(), path)
        m = None if rest is None else re.fullmatch(r"(.+)/_manifests/tags/([^/]+)/current/link", rest)
        if m is None:
            raise InvalidName(f"{path!r} is not a docker tag path under {self.base()!r}")
        name = f"{m.group(1)}:{m.group(2)}"
        split_tag(name)
        return name

    def list_prefix(self, prefix: str) -> str:
        repo, colon, tag = prefix.partition(":")
        if not colon:
            _check_prefix(prefix, "list prefix")
            return f"{self.base()}/{prefix}"
        _check_components(repo, "repository")
        if ":" in tag or "/" in tag or "\0" in tag:
            raise InvalidName(f"not a tag prefix: {prefix!r}")
        return f"{self.base()}/{repo}/_manifests/tags/{tag}"


PATHERS: dict[str, type[IdentityPather] | type[ShardedDockerBlobPather] | type[DockerTagPather]] = {
    cls.kind: cls for cls in (IdentityPather, ShardedDockerBlobPather, DockerTagPather)
}


def make_pather(kind: str, root: str = "") -> Pather:
    """The pather named ``kind`` (``identity``, ``sharded_docker_blob``, ``docker_tag``) under ``root``."""
    try:
        cls = PATHERS[kind]
    except KeyError:
        raise ValueError(f"unknown name_path {kind!r} (known: {', '.join(sorted(PATHERS))})") from None
    return cls(root)
