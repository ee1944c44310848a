"""Keys, certificates and tokens for the auth tests: what a token service would hold and sign."""

from __future__ import annotations

import datetime
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

ISSUER = "test-token-issuer"
SERVICE = "kraken-test"
REALM = "https://auth.test/token"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def private_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def certificate_pem(key: Any) -> bytes:
    """A self-signed certificate for ``key`` (how distribution is usually given the token service's key)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token signer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def access(type: str, name: str, *actions: str) -> dict[str, Any]:
    return {"type": type, "name": name, "actions": list(actions)}


def token(
    key: Any,
    grants: list[dict[str, Any]],
    *,
    now: float,
    ttl: float = 300.0,
    issuer: str = ISSUER,
    audience: str = SERVICE,
    nbf: float | None = None,
    algorithm: str | None = None,
    **claims: Any,
) -> str:
    """A signed registry token granting ``grants`` from ``now`` for ``ttl`` seconds."""
    body: dict[str, Any] = {"iss": issuer, "aud": audience, "sub": "tester", "exp": int(now + ttl), "access": grants}
    body["nbf"] = int(now if nbf is None else nbf)
    body.update(claims)
    alg = algorithm or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
    return jwt.encode(body, key, algorithm=alg)
