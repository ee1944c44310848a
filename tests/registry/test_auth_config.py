"""The ``auth:`` section of the proxy's config and the agent's loopback-only registry: errors name the
file and the key at start, and the defaults change nothing."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import pytest
from twisted.internet import task
from twisted.python import usage

from kraken import config
from kraken.agent.config import AgentConfig
from kraken.proxy.config import AuthConfig, ProxyConfig
from kraken.proxy.http import registry_auth
from kraken.workers import InlineWorker

from .auth_keys import certificate_pem, ec_key, private_pem


def load(cls: type, tmp_path: Path, text: str) -> object:
    path = tmp_path / "component.yaml"
    path.write_text(text)
    return config.load_or_usage_error(cls, str(path))


def refused(cls: type, tmp_path: Path, text: str, *fragments: str) -> None:
    with pytest.raises(usage.UsageError) as info:
        load(cls, tmp_path, text)
    for fragment in (str(tmp_path / "component.yaml"), *fragments):
        assert fragment in str(info.value)


def test_auth_is_off_by_default(tmp_path: Path) -> None:
    cfg = load(ProxyConfig, tmp_path, "{}\n")
    assert isinstance(cfg, ProxyConfig)
    assert cfg.auth == AuthConfig() and not cfg.auth.enabled
    assert registry_auth(cfg.auth, clock=task.Clock(), worker=InlineWorker()) is None


def test_htpasswd(tmp_path: Path) -> None:
    users = tmp_path / "htpasswd"
    users.write_text(f"alice:{bcrypt.hashpw(b'pw', bcrypt.gensalt(4)).decode()}\n")
    cfg = load(ProxyConfig, tmp_path, f"auth: {{htpasswd: {users}, realm: Builders, anonymous_pull: true}}\n")
    assert isinstance(cfg, ProxyConfig)
    assert (cfg.auth.htpasswd, cfg.auth.realm, cfg.auth.anonymous_pull) == (str(users), "Builders", True)
    assert registry_auth(cfg.auth, clock=task.Clock(), worker=InlineWorker()) is not None
    refused(ProxyConfig, tmp_path, f"auth: {{htpasswd: {tmp_path}/none}}\n", "auth: htpasswd: ", "cannot read")
    users.write_text("alice:plain\n")
    refused(ProxyConfig, tmp_path, f"auth: {{htpasswd: {users}}}\n", f"auth: htpasswd: {users}: line 1:")
    refused(ProxyConfig, tmp_path, "auth: {anonymous_pull: true}\n", "auth: anonymous_pull needs htpasswd or token")


def test_token(tmp_path: Path) -> None:
    cert = tmp_path / "signer.pem"
    cert.write_bytes(certificate_pem(ec_key()))
    section = f"auth:\n  token: {{realm: 'https://auth/token', service: reg, issuer: iss, certificates: {cert}}}\n"
    cfg = load(ProxyConfig, tmp_path, section)
    assert isinstance(cfg, ProxyConfig) and cfg.auth.token is not None
    assert (cfg.auth.token.certificate_files, cfg.auth.token.audience, cfg.auth.token.leeway) == ((str(cert),), "", 60)
    assert registry_auth(cfg.auth, clock=task.Clock(), worker=InlineWorker()) is not None
    refused(ProxyConfig, tmp_path, section.replace("service: reg, ", ""), "auth.token: missing required key 'service'")
    refused(ProxyConfig, tmp_path, section.replace("iss,", "'',"), "auth.token: token.issuer must not be empty")
    refused(ProxyConfig, tmp_path, section + f"  htpasswd: {cert}\n", "auth: htpasswd and token: choose one")
    cert.write_bytes(private_pem(ec_key()))
    refused(ProxyConfig, tmp_path, section, "auth.token: token.certificates: ", "PRIVATE KEY block")
    refused(ProxyConfig, tmp_path, section.replace(str(cert), "[]"), "token.certificates: name at least one")


@pytest.mark.parametrize(
    "listen",
    ["tcp:16000:interface=127.0.0.1", "tcp:16000:interface=127.0.0.9", r"tcp6:16000:interface=\:\:1", "unix:/run/r"],
)
def test_the_agent_registry_may_listen_on_loopback(tmp_path: Path, listen: str) -> None:
    cfg = load(AgentConfig, tmp_path, f"listen_registry: '{listen}'\n")
    assert isinstance(cfg, AgentConfig) and cfg.listen_registry == listen


@pytest.mark.parametrize(
    "listen",
    ["tcp:16000", "tcp:16000:interface=0.0.0.0", "tcp:16000:interface=10.1.2.3"],
)
def test_the_agent_registry_stays_local_unless_allowed(tmp_path: Path, listen: str) -> None:
    refused(
        AgentConfig, tmp_path, f"listen_registry: '{listen}'\n", "is not a loopback address", "allow_remote_registry"
    )
    cfg = load(AgentConfig, tmp_path, f"listen_registry: '{listen}'\nallow_remote_registry: true\n")
    assert isinstance(cfg, AgentConfig) and cfg.allow_remote_registry
