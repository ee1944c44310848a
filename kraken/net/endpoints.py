"""Endpoint descriptions: checking them, and where others reach a listener."""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import serverFromString

from kraken.core.address import canonical_host, join_host_port

_WILDCARDS = ("", "0.0.0.0", "::", "::0")
#: A colon inside an endpoint description's value (``interface=\\:\\:1``).
_ESCAPED_COLON = "\\:"


def host_port(description: str, wildcard_host: str) -> str | None:
    """``tcp:15002:interface=10.0.0.5`` -> ``10.0.0.5:15002``;
    ``tcp6:15002:interface=\\:\\:1`` -> ``[::1]:15002``.

    A wildcard or missing interface becomes ``wildcard_host``. None for
    descriptions without a TCP port (``unix:``, ``systemd:``). ``ValueError``
    for an interface with an IPv6 zone id (``fe80\\:\\:1%eth0``), which no
    other host could use.
    """
    parts = _split(description)
    if parts[0] not in ("tcp", "tcp6", "ssl") or len(parts) < 2:
        return None
    positional = [p for p in parts[1:] if "=" not in p]
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    port = options.get("port") or (positional[0] if positional else "")
    if not port.isdigit():
        return None
    host = options.get("interface", "")
    if host in _WILDCARDS:
        host = wildcard_host
    if "%" in host:
        raise ValueError(f"interface {host!r} of {description!r}: IPv6 zone ids are not supported")
    return join_host_port(canonical_host(host), int(port))


def listen_description(host: str, port: int) -> str:
    """The TCP listener on ``host`` (an address) and ``port``: ``tcp:15002:interface=127.0.0.1``, or
    ``tcp:15002:interface=\\:\\:1`` for an IPv6 address (its colons escaped, as Twisted requires; ``tcp:``
    listens on IPv6 when its interface is an IPv6 address)."""
    return f"tcp:{port}:interface={host.replace(':', _ESCAPED_COLON)}"


def endpoint_url(description: str) -> str:
    """``tcp:15002:interface=127.0.0.1`` -> ``http://127.0.0.1:15002``.

    Wildcard interfaces become the loopback address, so the URL is usable
    from the same host (the herd's case). ``ssl:`` gives https.
    """
    address = host_port(description, "127.0.0.1")
    if address is None:
        raise ValueError(f"no URL for endpoint {description!r} (need tcp:PORT or ssl:PORT)")
    scheme = "https" if description.startswith("ssl:") else "http"
    return f"{scheme}://{address}"


def check_listen(instance: object, attribute: Any, value: str) -> None:
    """attrs validator: ``value`` must be a server endpoint description
    Twisted can parse (``tcp:15002:interface=127.0.0.1``, ``ssl:...``,
    ``unix:...``, ``systemd:...``). Parsing does not touch the reactor."""
    try:
        serverFromString(None, value)
        host_port(value, "")
    except Exception as e:
        hint = ""
        if "interface=" in value and value.count(":") > 2 and _ESCAPED_COLON not in value:
            hint = " (escape the colons of an IPv6 interface: interface=\\:\\:1)"
        raise ValueError(f"{attribute.name}: not a usable endpoint description {value!r}: {e}{hint}") from None


def _split(description: str) -> list[str]:
    """Split on unescaped colons (``\\:`` escapes a colon, as in Twisted)."""
    parts, current, escaped = [], [], False
    for ch in description:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts
