"""A development CA: one CA and one certificate per daemon, made with ``cryptography``, kept in a directory.

For ``twistd kraken-herd --secure`` and anyone trying TLS out; not a production PKI (no revocation, the CA's
key sits beside the certificates). ``ensure_dev_ca(directory, names)`` writes::

    directory/trust/ca.crt        the CA certificate: what clients trust (skopeo --*-cert-dir takes this directory)
    directory/ca.key              the CA's private key (mode 0600)
    directory/certs/NAME.crt      one certificate per name, for 127.0.0.1, ::1 and localhost (and the
    directory/certs/NAME.key      ``hosts`` asked for), usable by servers and clients (mutual TLS); keys mode 0600

and reuses what is there while it is valid: the CA is made again when a file is missing, unreadable, expired
(or expires within ``RENEW_BEFORE``) or its key does not match, and then every certificate with it; a
certificate is made again on the same grounds, when the current CA did not sign it, or when its names (SANs)
are not the ones wanted (``hosts`` changed).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 365
LEAF_DAYS = 90
#: A certificate expiring sooner than this is made again at start.
RENEW_BEFORE = datetime.timedelta(days=1)
#: not_before this long in the past, for clocks a little behind.
BACKDATE = datetime.timedelta(hours=1)
HOSTS = ("localhost",)
ADDRESSES = ("127.0.0.1", "::1")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def host_name(value: str) -> x509.GeneralName:
    """A SAN for ``value``: an IP address (v4 or v6) or a DNS name (``*.`` allowed as its first label);
    ValueError saying which it is not."""
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    name = value.lower().removesuffix(".")
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{value!r} is not a host name or IP address")
    return x509.DNSName(name)


def wanted_names(hosts: Iterable[str] = ()) -> list[x509.GeneralName]:
    """The SANs of every leaf: the loopback names, then ``hosts`` (see ``host_name``), without repeats."""
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in HOSTS]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ADDRESSES]
    for host in hosts:
        name = host_name(host)
        if name not in names:
            names.append(name)
    return names


@attrs.frozen
class DevCA:
    """The paths of a development CA: ``ca`` (the CA certificate, in ``trust_dir``) and ``pairs[name]``
    (certificate path, key path); ``made`` names what this start wrote anew (``ca`` and/or names)."""

    directory: str
    ca: str
    trust_dir: str
    pairs: dict[str, tuple[str, str]]
    made: tuple[str, ...]


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return now or datetime.datetime.now(datetime.timezone.utc)


def _write(path: str, data: bytes, mode: int) -> None:
    """Write ``path`` atomically with ``mode`` (the file never exists with looser permissions)."""
    tmp = f"{path}.tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load(cert_path: str, key_path: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The certificate and key at these paths, or None when either is missing, unreadable or they do not match."""
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        return None
    return cert, key


def _fresh(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - RENEW_BEFORE > now


def _builder(subject: str, issuer: x509.Name | None, public: ec.EllipticCurvePublicKey, now: datetime.datetime,
             days: int) -> x509.CertificateBuilder:  # fmt: skip
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def make_ca(now: datetime.datetime, days: int = CA_DAYS) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = dict.fromkeys(
        ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
         "encipher_only", "decipher_only"), False)  # fmt: skip
    cert = (
        _builder("Kraken development CA", None, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(key_cert_sign=True, crl_sign=True, **usage), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    name: str,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
    days: int = LEAF_DAYS,
    sans: Sequence[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for ``name`` (its common name) with ``sans`` (default: the loopback ones), for servers
    and clients."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans = wanted_names() if sans is None else list(sans)
    eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        _builder(f"kraken {name}", ca.subject, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _names_of(cert: x509.Certificate) -> set[x509.GeneralName]:
    try:
        return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return set()


def ensure_dev_ca(
    directory: str,
    names: list[str] | tuple[str, ...],
    now: datetime.datetime | None = None,
    hosts: Sequence[str] = (),
) -> DevCA:
    """The CA and one certificate per name under ``directory``, each for the loopback names and ``hosts``:
    reused while valid, else made (see the module). ValueError for a host that is not a name or address."""
    at = _now(now)
    sans = wanted_names(hosts)
    trust_dir = os.path.join(directory, "trust")
    certs_dir = os.path.join(directory, "certs")
    for d in (directory, trust_dir, certs_dir):
        os.makedirs(d, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    ca_path, ca_key_path = os.path.join(trust_dir, "ca.crt"), os.path.join(directory, "ca.key")
    made: list[str] = []
    loaded = _load(ca_path, ca_key_path)
    if loaded is None or not _fresh(loaded[0], at):
        loaded = make_ca(at)
        _write(ca_key_path, _key_pem(loaded[1]), 0o600)
        _write(ca_path, loaded[0].public_bytes(serialization.Encoding.PEM), 0o644)
        made.append("ca")
    ca, ca_key = loaded
    pairs = {}
    for name in names:
        cert_path, key_path = os.path.join(certs_dir, f"{name}.crt"), os.path.join(certs_dir, f"{name}.key")
        leaf = _load(cert_path, key_path)
        if leaf is None or not _fresh(leaf[0], at) or not _signed_by(leaf[0], ca) or _names_of(leaf[0]) != set(sans):
            cert, key = make_leaf(name, ca, ca_key, at, sans=sans)
            _write(key_path, _key_pem(key), 0o600)
            _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
            made.append(name)
        pairs[name] = (cert_path, key_path)
    return DevCA(directory, ca_path, trust_dir, pairs, tuple(made))
