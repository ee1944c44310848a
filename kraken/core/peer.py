"""PeerInfo: who holds (part of) a blob, and where to dial it.

A peer id is 20 or 32 bytes written as 40 or 64 lowercase hex characters;
an ip is an IPv4 or IPv6 literal (normalised, so ``::FFFF:1.2.3.4`` and
``::ffff:1.2.3.4`` are one peer address; no IPv6 zone id, which would name an
interface of the host that announced it); a port is 1-65535.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from kraken.core.address import check_ip, join_host_port

_PEER_ID = re.compile(r"(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")


class PeerError(ValueError):
    """A peer description is malformed."""


def is_peer_id(text: object) -> bool:
    return isinstance(text, str) and _PEER_ID.match(text) is not None


def _check_peer_id(instance: object, attribute: object, value: str) -> None:
    if not is_peer_id(value):
        raise PeerError(f"peer id must be 40 or 64 lowercase hex characters, not {value!r}")


def _normalise_ip(value: str) -> str:
    if not isinstance(value, str):
        raise PeerError(f"ip must be text, not {type(value).__name__}")
    try:
        return check_ip(value)
    except ValueError as e:
        raise PeerError(str(e)) from None


def _check_port(instance: object, attribute: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise PeerError(f"port must be an integer in 1-65535, not {value!r}")


def _check_bool(instance: object, attribute: attrs.Attribute[bool], value: bool) -> None:
    if not isinstance(value, bool):
        raise PeerError(f"{attribute.name} must be true or false, not {value!r}")


@attrs.frozen
class PeerInfo:
    """A peer of one blob: an agent (``origin`` false) or an origin seeder."""

    peer_id: str = attrs.field(validator=_check_peer_id)
    ip: str = attrs.field(converter=_normalise_ip)
    port: int = attrs.field(validator=_check_port)
    complete: bool = attrs.field(default=False, validator=_check_bool)
    origin: bool = attrs.field(default=False, validator=_check_bool)

    @property
    def address(self) -> str:
        """Where to dial it, as text: ``10.0.0.7:16001`` or ``[2001:db8::7]:16001``."""
        return join_host_port(self.ip, self.port)

    def to_json(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "ip": self.ip,
            "port": self.port,
            "complete": self.complete,
            "origin": self.origin,
        }

    @classmethod
    def from_json(cls, doc: object) -> PeerInfo:
        """From the dict ``to_json`` makes; exactly those keys. Raises ``PeerError``."""
        if not isinstance(doc, dict):
            raise PeerError("a peer must be a JSON object")
        keys = {"peer_id", "ip", "port", "complete", "origin"}
        if set(doc) != keys:
            raise PeerError(f"a peer has exactly the keys {sorted(keys)}, not {sorted(map(str, doc))}")
        return cls(doc["peer_id"], doc["ip"], doc["port"], doc["complete"], doc["origin"])
