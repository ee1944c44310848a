"""SIGHUP reloads the proxy's credentials: the token service's keys and the htpasswd file, through the
``ReloadOnSIGHUP`` every daemon has; a reload that fails keeps the previous ones and says why, naming the
file, never with a traceback."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import bcrypt
import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs

from kraken.net import ReloadOnSIGHUP
from kraken.proxy.config import AuthConfig, TokenAuthConfig
from kraken.proxy.http import registry_auth
from kraken.registry.htpasswd import HtpasswdFile
from kraken.registry.tokens import TokenKeys
from kraken.workers import InlineWorker

from .auth_keys import ISSUER, REALM, SERVICE, access, certificate_pem, ec_key, rsa_key, token
from .conftest import Registry

NOW = 1_800_000_000.0


def token_registry(tmp_path: Path, keys: Path) -> tuple[Registry, Any]:
    clock = task.Clock()
    clock.advance(NOW)
    cfg = AuthConfig(token=TokenAuthConfig(realm=REALM, service=SERVICE, issuer=ISSUER, certificates=str(keys)))
    auth = registry_auth(cfg, clock=clock, worker=InlineWorker())
    return Registry(tmp_path / "registry", clock, auth=auth), auth


def status(registry: Registry, key: Any) -> int:
    value = "Bearer " + token(key, [access("repository", "a", "pull")], now=NOW)
    return registry.get("/v2/a/tags/list", headers={"Authorization": value}).code


def test_token_keys_reload(tmp_path: Path) -> None:
    old, new = rsa_key(), ec_key()
    keys = tmp_path / "signer.pem"
    keys.write_bytes(certificate_pem(old))
    registry, auth = token_registry(tmp_path, keys)
    assert (status(registry, old), status(registry, new)) == (404, 401), "past auth: NAME_UNKNOWN"
    keys.write_bytes(certificate_pem(new))
    assert (status(registry, old), status(registry, new)) == (404, 401), "read at start, and on SIGHUP only"
    with capturedLogs() as events:
        assert auth.reload() is True
    assert [e["log_format"] for e in events] == ["token keys reloaded from {paths}: {count} keys"]
    assert (status(registry, old), status(registry, new)) == (401, 404)


def test_a_broken_key_file_keeps_the_previous_keys(tmp_path: Path) -> None:
    key = rsa_key()
    keys = tmp_path / "signer.pem"
    keys.write_bytes(certificate_pem(key))
    registry, auth = token_registry(tmp_path, keys)
    for broken, why in [
        (b"not a key", f"{keys}: no PEM certificate or public key found"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            f"{keys}: PEM block 1 is not a readable CERTIFICATE",
        ),
        (None, f"{keys}: cannot read: No such file or directory"),
    ]:
        if broken is None:
            keys.unlink()
        else:
            keys.write_bytes(broken)
        with capturedLogs() as events:
            assert auth.reload() is False
        (event,) = events
        assert event["log_format"] == "token keys not reloaded, keeping the previous {count}: {why}"
        assert event["why"].startswith(why) and event["count"] == 1
        assert status(registry, key) == 404, "the previous key still verifies"


def test_token_keys_alone(tmp_path: Path) -> None:
    first = tmp_path / "a.pem"
    first.write_bytes(certificate_pem(rsa_key()))
    keys = TokenKeys([str(first)])
    first.write_bytes(certificate_pem(rsa_key()) + certificate_pem(ec_key()))
    assert keys.reload() is True and len(keys.keys) == 2


def write_users(path: Path, **users: str) -> None:
    path.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}\n" for u, p in users.items()))


def test_htpasswd_reload_even_when_it_looks_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    write_users(path, alice="one")
    users = HtpasswdFile(str(path))
    stat = path.stat()
    write_users(path, alice="two")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: only SIGHUP notices
    with capturedLogs() as events:
        assert users.reload() is True
    assert [e["log_format"] for e in events] == ["htpasswd file {path} reloaded: {count} users"]
    assert users.check("alice", "two") and not users.check("alice", "one")
    path.write_text("alice:plain\n")
    with capturedLogs() as events:
        assert users.reload() is False
    (event,) = events
    assert event["why"].startswith(f"{path}: line 1:")
    assert users.check("alice", "two")


@pytest_twisted.ensureDeferred
async def test_a_real_sighup_reloads_the_auth_too(reactor: Any, tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    write_users(path, alice="one")
    auth = registry_auth(AuthConfig(htpasswd=str(path)), clock=task.Clock(), worker=InlineWorker())
    assert auth is not None
    reloaded: Deferred[bool] = Deferred()
    reloader = ReloadOnSIGHUP(None, reactor, after=reloaded.callback, also=[auth])
    reloader.startService()
    try:
        with capturedLogs() as events:
            os.kill(os.getpid(), signal.SIGHUP)
            assert await reloaded is True
        formats = [e.get("log_format") for e in events]
        assert "htpasswd file {path} reloaded: {count} users" in formats
        assert "SIGHUP: nothing to reload (no tls block)" not in formats, "the auth was reloaded"
    finally:
        reloader.stopService()
