"""``kraken-herd --secure``: the config it gives every daemon, the proxy's user, and what it logs (no sockets)."""

import os
import stat

import bcrypt
import pytest
from cryptography import x509
from twisted.logger import capturedLogs
from twisted.python import usage

from kraken.herd.tap import Herd, Options


def options(*argv):
    o = Options()
    o.parseOptions(list(argv))
    return o


def test_every_link_gets_tls_and_the_internal_ones_mutual_tls(tmp_path):
    cfg = options("--secure", "-d", str(tmp_path), "--agents", "2")["parsed"]
    secure = cfg.secure
    ca = str(tmp_path / "secure" / "trust" / "ca.crt")
    assert secure.ca.ca == ca
    internal = [cfg.origin, cfg.tracker, cfg.build_index, *cfg.agents]
    for c in internal:
        assert c.tls.ca == c.tls.client_ca == ca and c.tls.require_client_cert
    assert [c.tls.cert for c in internal] == [
        str(tmp_path / "secure" / "certs" / f"{n}.crt")
        for n in ("origin", "tracker", "build-index", "agent-0", "agent-1")
    ]
    # The proxy: TLS for clients without a client certificate (they use Basic auth); its own certificate
    # is what it presents to the origin and the build-index.
    assert cfg.proxy.tls.client_ca is None and not cfg.proxy.tls.require_client_cert
    assert cfg.proxy.tls.cert == str(tmp_path / "secure" / "certs" / "proxy.crt")
    assert cfg.proxy.auth.htpasswd == str(tmp_path / "secure" / "htpasswd")
    assert cfg.proxy.origin == cfg.tracker.origin == cfg.build_index.origin == "https://127.0.0.1:15002"
    assert cfg.proxy.build_index == "https://127.0.0.1:15004"
    assert all(
        a.tracker == "https://127.0.0.1:15003" and a.build_index == "https://127.0.0.1:15004" for a in cfg.agents
    )
    assert cfg.origin.p2p.tls and all(a.p2p.tls for a in cfg.agents)


def test_a_generated_user_in_a_private_file_reused_on_the_next_start(tmp_path):
    secure = options("--secure", "-d", str(tmp_path), "--agents", "0")["parsed"].secure
    assert secure.new_password and secure.user == "kraken" and len(secure.password) >= 20
    assert stat.S_IMODE(os.stat(secure.credentials).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(secure.htpasswd).st_mode) == 0o600
    assert open(secure.credentials).read() == f"kraken:{secure.password}\n"
    user, hashed = open(secure.htpasswd).read().strip().split(":", 1)
    assert user == "kraken" and hashed.startswith("$2b$") and bcrypt.checkpw(secure.password.encode(), hashed.encode())
    again = options("--secure", "-d", str(tmp_path), "--agents", "0")["parsed"].secure
    assert (again.password, again.new_password, again.ca.made) == (secure.password, False, ())
    # A lost credentials file: a new password (the htpasswd entry follows).
    os.unlink(secure.credentials)
    third = options("--secure", "-d", str(tmp_path), "--agents", "0")["parsed"].secure
    assert third.new_password and third.password != secure.password
    assert bcrypt.checkpw(third.password.encode(), open(third.htpasswd).read().strip().split(":", 1)[1].encode())


def _secure_lines(tmp_path):
    herd = Herd(options("--secure", "-d", str(tmp_path), "--agents", "0")["parsed"])
    with capturedLogs() as events:
        herd.startService()
    herd.stopService()
    return [e for e in events if "kraken-herd --secure" in e["log_format"]]


def test_the_password_is_logged_once_where_it_was_made(tmp_path):
    [first] = _secure_lines(tmp_path)
    secure_dir = tmp_path / "secure"
    password = open(secure_dir / "credentials").read().strip().split(":", 1)[1]
    assert first["password"] == f"password {password}" and first["user"] == "kraken"
    assert first["trust_dir"] == str(secure_dir / "trust") and first["credentials"] == str(secure_dir / "credentials")
    [again] = _secure_lines(tmp_path)
    assert password not in str(again) and again["made"] == ""


def test_without_secure_nothing_changes(tmp_path):
    cfg = options("-d", str(tmp_path))["parsed"]
    assert cfg.secure is None and not os.path.exists(tmp_path / "secure")
    assert not cfg.origin.tls.configured and not cfg.proxy.auth.enabled
    assert cfg.proxy.origin == "http://127.0.0.1:15002"


def test_an_unwritable_state_dir_is_a_usage_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(usage.UsageError, match=r"--secure: cannot write .*file/state"):
        options("--secure", "-d", str(tmp_path / "file" / "state"))


def test_secure_hosts_are_named_by_every_certificate(tmp_path):
    cfg = options("--secure", "--secure-hosts", "herd.lan, 10.0.0.5", "-d", str(tmp_path), "--agents", "1")["parsed"]
    assert cfg.secure.hosts == ("herd.lan", "10.0.0.5")
    for c in (cfg.proxy, cfg.origin, *cfg.agents):
        with open(c.tls.cert, "rb") as f:
            sans = x509.load_pem_x509_certificate(f.read()).extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            )
        assert "herd.lan" in sans.value.get_values_for_type(x509.DNSName)
    with capturedLogs() as events:
        Herd(cfg)._log_secure(cfg.secure)
    assert events[0]["hosts"] == ", herd.lan, 10.0.0.5"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--secure-hosts", "herd.lan"], "--secure-hosts needs --secure"),
        (["--secure", "--secure-hosts", "herd.lan,bad_name"], "--secure-hosts: 'bad_name' is not a host name"),
    ],
)
def test_secure_hosts_errors(tmp_path, argv, message):
    with pytest.raises(usage.UsageError, match=message):
        options(*argv, "-d", str(tmp_path))
