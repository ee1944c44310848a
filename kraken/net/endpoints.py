"""Endpoint descriptions: checking them, and where others reach a listener."""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import serverFromString

_WILDCARDS = ("", "0.0.0.0", "::", "::0")


def host_port(description: str, wildcard_host: str) -> str | None:
    """``tcp:15002:interface=10.0.0.5`` -> ``10.0.0.5:15002``.

    A wildcard or missing interface becomes ``wildcard_host``. None for
    descriptions without a TCP port (``unix:``, ``systemd:``).
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
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


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
    except Exception as e:
        raise ValueError(f"{attribute.name}: not a usable endpoint description {value!r}: {e}") from None


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
