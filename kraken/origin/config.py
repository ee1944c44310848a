"""The origin's configuration (``etc/kraken/origin.yaml``).

YAML keys are the attrs field names below; build it with
``kraken.config.build(OriginConfig, kraken.config.load(path))``.
"""

from __future__ import annotations

import re
import socket
from typing import TypeVar

import attrs

from kraken.config import Duration, Size
from kraken.core import PieceLengthRule
from kraken.net import HTTPClientConfig

DEFAULT_LISTEN_HTTP = "tcp:15002:interface=127.0.0.1"
_UNSPECIFIED_HOSTS = ("", "0.0.0.0", "::", "::0")

_Number = TypeVar("_Number", bound=float)


def _default_piece_lengths() -> dict[Size, Size]:
    return {Size(size): Size(length) for size, length in PieceLengthRule.default().steps}


def _check_piece_lengths(instance: object, attribute: object, value: dict[Size, Size]) -> None:
    try:
        PieceLengthRule.from_mapping({int(k): int(v) for k, v in value.items()})
    except ValueError as e:  # build() reports it with the file and the section's key path
        raise ValueError(f"piece_lengths: {e}") from None


def _positive(instance: object, attribute: attrs.Attribute[_Number], value: _Number) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value}")


@attrs.frozen
class StoreConfig:
    """Where the blobs live, and how they are cut into pieces."""

    root: str = "/var/lib/kraken/origin"
    # blob size -> piece length; the largest key not above a blob's size wins; a key 0 is required.
    piece_lengths: dict[Size, Size] = attrs.field(factory=_default_piece_lengths, validator=_check_piece_lengths)

    def piece_rule(self) -> PieceLengthRule:
        return PieceLengthRule.from_mapping({int(k): int(v) for k, v in self.piece_lengths.items()})


@attrs.frozen
class ThreadsConfig:
    """Sizes of the named thread pools."""

    cpu: int = attrs.field(default=2, validator=_positive)  # hashing
    io: int = attrs.field(default=4, validator=_positive)  # disk: uploads, commits, stats


@attrs.frozen
class OriginConfig:
    # Endpoint description (strports): tcp:, tcp6:, ssl:, unix:, systemd:.
    listen_http: str = DEFAULT_LISTEN_HTTP
    # host:port other components reach this origin at (Origin-Locations). Derived from a tcp/ssl
    # listen_http when unset; required for unix:/systemd: listeners.
    advertise: str | None = None
    store: StoreConfig = attrs.field(factory=StoreConfig)
    # An upload untouched for this long is deleted.
    upload_ttl: Duration = attrs.field(default=Duration(3600.0), validator=_positive)
    threads: ThreadsConfig = attrs.field(factory=ThreadsConfig)
    http_client: HTTPClientConfig = attrs.field(factory=HTTPClientConfig)

    def __attrs_post_init__(self) -> None:
        self.advertised()  # fail at load time, not at the first locations request

    def advertised(self) -> str:
        """The ``host:port`` this origin advertises."""
        if self.advertise is not None:
            if not self.advertise.strip():
                raise ValueError("advertise must not be empty")
            return self.advertise
        derived = advertise_from_endpoint(self.listen_http)
        if derived is None:
            raise ValueError(
                f"cannot derive a host:port to advertise from listen_http {self.listen_http!r}; set 'advertise'"
            )
        return derived


def advertise_from_endpoint(description: str) -> str | None:
    """``tcp:15002:interface=10.0.0.5`` -> ``10.0.0.5:15002``; an unspecified
    interface gives this host's name. None for endpoints without a TCP port."""
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", description)]
    if parts[0] not in ("tcp", "tcp6", "ssl"):
        return None
    positional = [p for p in parts[1:] if "=" not in p]
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    port = options.get("port") or (positional[0] if positional else "")
    if not port.isdigit():
        return None
    host = options.get("interface", "")
    if host in _UNSPECIFIED_HOSTS:
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"
