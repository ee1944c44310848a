"""Addresses as text: ``host:port`` with an IPv6 literal in brackets, and IP literals checked.

Every daemon, host list and peer address is written one way: ``10.0.0.5:15002``, ``origin-1:15002``
or ``[2001:db8::5]:15002``. An IPv6 address without brackets is refused (``::1:15002`` could mean two
things), and so is a zone id (``fe80::1%eth0``): it names an interface of the host that wrote it, so
an address that carries one means nothing to the peers and members it is handed to.
"""

from __future__ import annotations

import ipaddress

__all__ = ["canonical_host", "check_ip", "is_ipv6", "join_host_port", "split_host_port"]

_ZONE = "IPv6 zone ids ('%{zone}') are not supported: use a global or unique-local address instead of {text!r}"


def is_ipv6(host: str) -> bool:
    """Whether ``host`` (without brackets) is an IPv6 literal."""
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def check_ip(text: object) -> str:
    """An IPv4 or IPv6 literal, normalised (``::FFFF:1.2.3.4`` -> ``::ffff:1.2.3.4``); ``ValueError`` if not one."""
    if not isinstance(text, str):
        raise ValueError(f"an IP address must be text, not {type(text).__name__}")
    if "%" in text:
        raise ValueError(_ZONE.format(zone=text.partition("%")[2], text=text))
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None


def canonical_host(host: str) -> str:
    """An IPv6 literal in its one written form (``0:0::1`` -> ``::1``); any other host unchanged."""
    return str(ipaddress.IPv6Address(host)) if is_ipv6(host) else host


def split_host_port(text: object) -> tuple[str, int]:
    """``"10.0.0.5:15002"``, ``"origin-1:15002"`` or ``"[::1]:15002"`` -> (host, port), the host without
    brackets; ``ValueError`` naming what is wrong otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"an address must be 'host:port' text, not {type(text).__name__}")
    if text.startswith("[") and text.endswith("]"):
        raise ValueError(f"must be 'host:port', not {text!r}: an IPv6 address needs its port after the brackets")
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if "%" in host:
            raise ValueError(_ZONE.format(zone=host.partition("%")[2], text=text))
        if not is_ipv6(host):
            raise ValueError(f"only an IPv6 address goes in brackets, not {host!r} in {text!r}")
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets: '[addr]:port', not {text!r}")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be 'host:port', not {text!r}")
    if any(c.isspace() or c in "/[]%" for c in host):
        raise ValueError(f"not a host name or address in {text!r}")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    """(host, port) -> ``"host:port"``, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
