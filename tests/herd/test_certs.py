"""The development CA of ``kraken-herd --secure``: what it writes, and when it writes it again."""

import datetime
import ipaddress
import os
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address

from kraken.cli.certs import CA_DAYS, LEAF_DAYS, ensure_dev_ca
from kraken.net.tls import TLSConfig, check

NAMES = ("origin", "agent-0")


def _cert(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def _valid_at(ca, name, at):
    """``name``'s certificate is valid at ``at`` and signed by the CA, itself valid then."""
    root, leaf = _cert(ca.ca), _cert(ca.pairs[name][0])
    leaf.verify_directly_issued_by(root)
    return all(c.not_valid_before_utc <= at < c.not_valid_after_utc for c in (root, leaf))


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_ca_and_a_certificate_per_name_for_loopback_servers_and_clients(tmp_path):
    ca = ensure_dev_ca(str(tmp_path / "secure"), NAMES)
    assert ca.made == ("ca", *NAMES)
    assert ca.ca == str(tmp_path / "secure" / "trust" / "ca.crt")
    assert os.listdir(ca.trust_dir) == ["ca.crt"]  # what skopeo --*-cert-dir reads: the CA alone
    root = _cert(ca.ca)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    now = datetime.datetime.now(datetime.timezone.utc)
    assert root.not_valid_before_utc <= now < root.not_valid_after_utc
    assert root.not_valid_after_utc - now > datetime.timedelta(days=CA_DAYS - 1)
    for name in NAMES:
        cert_path, key_path = ca.pairs[name]
        leaf = _cert(cert_path)
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
        assert sans.get_values_for_type(x509.IPAddress) == [
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address("::1"),
        ]
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc
        assert leaf.not_valid_after_utc - now > datetime.timedelta(days=LEAF_DAYS - 1)
        # What every daemon checks at start: the pair matches and the CA signed it.
        check(TLSConfig(ca=ca.ca, cert=cert_path, key=key_path, client_ca=ca.ca, require_client_cert=True))


def test_keys_are_readable_by_their_owner_only(tmp_path):
    ca = ensure_dev_ca(str(tmp_path / "secure"), NAMES)
    assert _mode(ca.directory) == 0o700
    assert _mode(os.path.join(ca.directory, "ca.key")) == 0o600
    for _, key in ca.pairs.values():
        assert _mode(key) == 0o600


def _contents(ca):
    paths = [ca.ca, os.path.join(ca.directory, "ca.key"), *(p for pair in ca.pairs.values() for p in pair)]
    return {p: open(p, "rb").read() for p in paths}


def test_a_valid_ca_and_certificates_are_reused(tmp_path):
    first = ensure_dev_ca(str(tmp_path), NAMES)
    before = _contents(first)
    again = ensure_dev_ca(str(tmp_path), NAMES)
    assert again.made == ()
    assert _contents(again) == before
    # A new name gets a certificate from the same CA.
    more = ensure_dev_ca(str(tmp_path), (*NAMES, "agent-1"))
    assert more.made == ("agent-1",)
    check(TLSConfig(ca=more.ca, cert=more.pairs["agent-1"][0], key=more.pairs["agent-1"][1]))


def test_an_expired_ca_is_made_again_with_every_certificate(tmp_path):
    ensure_dev_ca(str(tmp_path), NAMES)
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=CA_DAYS + 1)
    ca = ensure_dev_ca(str(tmp_path), NAMES, now=later)
    assert ca.made == ("ca", *NAMES)
    assert all(_valid_at(ca, name, later) for name in NAMES)


def test_expired_certificates_are_made_again_under_the_same_ca(tmp_path):
    first = ensure_dev_ca(str(tmp_path), NAMES)
    root = open(first.ca, "rb").read()
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=LEAF_DAYS + 1)
    ca = ensure_dev_ca(str(tmp_path), NAMES, now=later)
    assert ca.made == NAMES
    assert open(ca.ca, "rb").read() == root
    assert all(_valid_at(ca, name, later) for name in NAMES)


def test_missing_or_mismatched_files_are_made_again(tmp_path):
    first = ensure_dev_ca(str(tmp_path), NAMES)
    os.unlink(first.pairs["origin"][1])
    assert ensure_dev_ca(str(tmp_path), NAMES).made == ("origin",)
    # agent-0's key replaced by origin's: the pair no longer matches.
    with open(first.pairs["origin"][1], "rb") as src, open(first.pairs["agent-0"][1], "wb") as dst:
        dst.write(src.read())
    assert ensure_dev_ca(str(tmp_path), NAMES).made == ("agent-0",)
    # A new CA (its key lost): certificates the old one signed are made again.
    os.unlink(os.path.join(first.directory, "ca.key"))
    ca = ensure_dev_ca(str(tmp_path), NAMES)
    assert ca.made == ("ca", *NAMES)
    check(TLSConfig(ca=ca.ca, cert=ca.pairs["agent-0"][0], key=ca.pairs["agent-0"][1]))


def _sans(ca, name):
    leaf = _cert(ca.pairs[name][0])
    return leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_extra_hosts_are_named_and_a_change_makes_the_certificates_again(tmp_path):
    directory = str(tmp_path / "secure")
    first = ensure_dev_ca(directory, NAMES)
    hosts = ["herd.lan", "10.0.0.5", "fd00::5", "*.kraken.example"]
    ca = ensure_dev_ca(directory, NAMES, hosts=hosts)
    assert ca.made == NAMES, "the CA stays; the certificates are made again for the new names"
    for name in NAMES:
        sans = _sans(ca, name)
        assert sans.get_values_for_type(x509.DNSName) == ["localhost", "herd.lan", "*.kraken.example"]
        assert sans.get_values_for_type(x509.IPAddress) == [
            ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.0.0.5", "fd00::5")
        ]
        assert _valid_at(ca, name, datetime.datetime.now(datetime.timezone.utc))
    assert ensure_dev_ca(directory, NAMES, hosts=list(reversed(hosts))).made == (), "the same names: reused"
    assert ensure_dev_ca(directory, NAMES, hosts=["HERD.lan", "10.0.0.5"]).made == NAMES
    assert ensure_dev_ca(directory, NAMES).made == NAMES, "back to loopback only"
    assert _sans(first, "origin").get_values_for_type(x509.DNSName) == ["localhost"]


def test_a_leaf_for_a_lan_name_passes_the_hostname_check(tmp_path):
    ca = ensure_dev_ca(str(tmp_path / "secure"), ["proxy"], hosts=["herd.lan", "10.0.0.5"])
    leaf = _cert(ca.pairs["proxy"][0])
    verify_certificate_hostname(leaf, "herd.lan")
    verify_certificate_ip_address(leaf, "10.0.0.5")
    with pytest.raises(VerificationError):
        verify_certificate_hostname(leaf, "other.lan")


@pytest.mark.parametrize("host", ["bad_host", "-a.lan", "a..lan", "", "*", "a.*.lan", "x" * 64 + ".lan"])
def test_a_bad_host_is_refused(tmp_path, host):
    with pytest.raises(ValueError, match="is not a host name or IP address"):
        ensure_dev_ca(str(tmp_path / "secure"), NAMES, hosts=[host])
