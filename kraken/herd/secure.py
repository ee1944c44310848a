"""``kraken-herd --secure``: TLS and mutual TLS on every link, and Basic auth on the proxy, in one command.

Under ``state_dir/secure`` (mode 0700): a development CA and one certificate per daemon (``kraken.cli.certs``)
for the loopback names and the ``--secure-hosts`` given (so a herd on a LAN can be reached by its name; made
again when those change), an htpasswd file (bcrypt) with one generated user, and ``credentials`` (mode
0600): ``user:password``, what ``skopeo --dest-creds`` takes. Everything is reused on the next start while
valid (the password is kept while both ``credentials`` and ``htpasswd`` still agree).
``add_secure_defaults`` gives the herd's per-section config defaults: the internal daemons (origin, tracker,
build-index, agents) ask for client certificates signed by the CA, the proxy serves TLS without asking for
one (clients authenticate with Basic auth), every URL is https:// and P2P runs over mutual TLS. Keys the
herd's YAML sets win over these defaults.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from typing import Any

import attrs
import bcrypt

from kraken.cli.certs import DevCA, ensure_dev_ca, host_name
from kraken.registry.htpasswd import read_htpasswd

USER = "kraken"
INTERNAL = ("origin", "tracker", "build-index")


@attrs.frozen
class SecureHerd:
    ca: DevCA
    htpasswd: str
    credentials: str
    user: str
    password: str
    new_password: bool  # made by this start (the log shows it once); else read from ``credentials``
    hosts: tuple[str, ...] = ()  # what the certificates name besides loopback (--secure-hosts)


def parse_hosts(value: str | None, secure: bool) -> tuple[str, ...]:
    """``--secure-hosts host1,10.0.0.5`` as a tuple; ValueError for a bad name, or when not ``secure``."""
    if value is None:
        return ()
    if not secure:
        raise ValueError("--secure-hosts needs --secure")
    hosts = tuple(h.strip() for h in value.split(",") if h.strip())
    for host in hosts:
        try:
            host_name(host)
        except ValueError as e:
            raise ValueError(f"--secure-hosts: {e}") from None
    return hosts


def _existing(credentials: str, htpasswd: str) -> tuple[str, str] | None:
    """The (user, password) of ``credentials`` when ``htpasswd`` still accepts it."""
    try:
        with open(credentials, encoding="utf-8") as f:
            user, sep, password = f.read().strip().partition(":")
        entries = read_htpasswd(htpasswd)
    except (OSError, ValueError):
        return None
    hashed = entries.get(user)
    if not sep or not password or hashed is None or not bcrypt.checkpw(password.encode(), hashed):
        return None
    return user, password


def _write_private(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def ensure_secure(state_dir: str, agents: int, hosts: Sequence[str] = ()) -> SecureHerd:
    """Make (or reuse) the CA, the certificates and the proxy's user under ``state_dir/secure``; the
    certificates name the loopback addresses and ``hosts`` (made again when ``hosts`` change)."""
    directory = os.path.join(state_dir, "secure")
    ca = ensure_dev_ca(directory, [*INTERNAL, "proxy", *(f"agent-{k}" for k in range(agents))], hosts=hosts)
    hosts = tuple(hosts)
    htpasswd, credentials = os.path.join(directory, "htpasswd"), os.path.join(directory, "credentials")
    found = _existing(credentials, htpasswd)
    if found is not None:
        return SecureHerd(ca, htpasswd, credentials, found[0], found[1], new_password=False, hosts=hosts)
    password = secrets.token_urlsafe(18)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    _write_private(htpasswd, f"{USER}:{hashed}\n")
    _write_private(credentials, f"{USER}:{password}\n")
    return SecureHerd(ca, htpasswd, credentials, USER, password, new_password=True, hosts=hosts)


def https(url: str) -> str:
    return "https://" + url.removeprefix("http://")


def add_secure_defaults(defaults: dict[str, Any], secure: SecureHerd, section: str, agent: int | None = None) -> None:
    """Add the secure herd's keys to ``defaults``, the config defaults of ``section`` (a herd section; for
    ``agent``, agent number ``agent``)."""
    name = "build-index" if section == "build_index" else section if agent is None else f"agent-{agent}"
    cert, key = secure.ca.pairs[name]
    tls: dict[str, Any] = {"ca": secure.ca.ca, "cert": cert, "key": key}
    if section == "proxy":
        defaults.update(tls=tls, auth={"htpasswd": secure.htpasswd})
        return
    defaults["tls"] = {**tls, "client_ca": secure.ca.ca, "require_client_cert": True}
    if section in ("origin", "agent"):
        defaults.setdefault("p2p", {})["tls"] = True
