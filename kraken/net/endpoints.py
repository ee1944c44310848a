"""Turning a listening endpoint description into the URL others reach it at."""

from __future__ import annotations


def endpoint_url(description: str, scheme: str | None = None) -> str:
    """``tcp:15002:interface=127.0.0.1`` -> ``http://127.0.0.1:15002``.

    Wildcard or missing interfaces become the loopback address, so the URL
    is usable from the same host (the herd's case). ``ssl:`` gives https.
    Only ``tcp`` and ``ssl`` descriptions have a URL.
    """
    parts = _split(description)
    kind = parts[0] if parts else ""
    if kind not in ("tcp", "ssl") or len(parts) < 2:
        raise ValueError(f"no URL for endpoint {description!r} (need tcp:PORT or ssl:PORT)")
    positional = [p for p in parts[1:] if "=" not in p]
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    port = options.get("port") or (positional[0] if positional else "")
    if not port.isdigit():
        raise ValueError(f"endpoint {description!r} has no port number")
    host = options.get("interface", "")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = scheme or ("https" if kind == "ssl" else "http")
    return f"{scheme}://{host}:{port}"


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
