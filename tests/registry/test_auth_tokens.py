"""Bearer token verification (``kraken.registry.tokens``): signature, issuer, audience, expiry and
not-before with the leeway, and the access claim."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest

from kraken.registry.tokens import InvalidToken, TokenVerifier, load_public_keys, parse_access

from .auth_keys import ISSUER, SERVICE, access, certificate_pem, ec_key, private_pem, public_pem, rsa_key, token

NOW = 1_800_000_000.0
PULL = [access("repository", "a/b", "pull")]


@pytest.fixture(scope="module")
def key() -> Any:
    return rsa_key()


@pytest.fixture(scope="module")
def verifier(key: Any) -> TokenVerifier:
    return TokenVerifier((key.public_key(),), issuer=ISSUER, audience=SERVICE, leeway=60.0)


def test_a_good_token_grants_its_access(key: Any, verifier: TokenVerifier) -> None:
    grants = verifier.verify(token(key, [*PULL, access("registry", "catalog", "*")], now=NOW), NOW)
    assert grants.allows("repository", "a/b", "pull")
    assert not grants.allows("repository", "a/b", "push")
    assert not grants.allows("repository", "a/c", "pull")
    assert grants.allows("registry", "catalog", "*")


@pytest.mark.parametrize(
    ("when", "ok"),
    [(NOW + 300 + 59, True), (NOW + 300 + 61, False), (NOW - 59, True), (NOW - 61, False)],
    ids=["expired-within-leeway", "expired", "early-within-leeway", "not-yet-valid"],
)
def test_expiry_and_not_before_with_leeway(key: Any, verifier: TokenVerifier, when: float, ok: bool) -> None:
    signed = token(key, PULL, now=NOW, ttl=300)
    if ok:
        assert verifier.verify(signed, when).allows("repository", "a/b", "pull")
    else:
        with pytest.raises(InvalidToken, match=r"expired|not valid yet"):
            verifier.verify(signed, when)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"audience": "another-registry"}, "not for audience 'kraken-test'"),
        ({"issuer": "someone-else"}, "not from issuer 'test-token-issuer'"),
        ({"exp": None}, "no expiry time"),
        ({"exp": "soon"}, "no expiry time"),
        ({"nbf": "later"}, "not valid yet"),
        ({"access": {"type": "repository"}}, "access claim is not a list"),
    ],
)
def test_bad_claims(key: Any, verifier: TokenVerifier, changes: dict[str, Any], why: str) -> None:
    kwargs = {k: v for k, v in changes.items() if k in ("audience", "issuer")}
    claims = {k: v for k, v in changes.items() if k not in kwargs}
    signed = jwt.encode(
        {**jwt.decode(token(key, PULL, now=NOW, **kwargs), options={"verify_signature": False}), **claims},
        key,
        algorithm="RS256",
    )
    with pytest.raises(InvalidToken, match=why):
        verifier.verify(signed, NOW)


def test_a_token_signed_by_another_key_is_refused(verifier: TokenVerifier) -> None:
    with pytest.raises(InvalidToken, match="no configured key verifies its signature"):
        verifier.verify(token(rsa_key(), PULL, now=NOW), NOW)


def test_a_token_signed_with_the_public_key_as_an_hmac_secret_is_refused(key: Any, verifier: TokenVerifier) -> None:
    body = {"iss": ISSUER, "aud": SERVICE, "exp": int(NOW + 60), "access": PULL}
    signing_input = b".".join(
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=")
        for part in ({"alg": "HS256", "typ": "JWT"}, body)
    )
    mac = hmac.new(public_pem(key), signing_input, hashlib.sha256).digest()
    forged = (signing_input + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()
    for bad in (forged, "not.a.token", jwt.encode(body, None, algorithm="none")):
        with pytest.raises(InvalidToken):
            verifier.verify(bad, NOW)


def test_ec_keys_and_several_keys() -> None:
    rsa_signer, ec_signer = rsa_key(), ec_key()
    verifier = TokenVerifier(
        (rsa_signer.public_key(), ec_signer.public_key()), issuer=ISSUER, audience=SERVICE, leeway=0.0
    )
    for signer in (rsa_signer, ec_signer):
        assert verifier.verify(token(signer, PULL, now=NOW), NOW).allows("repository", "a/b", "pull")
    # An RS256 header on an EC key's signature is never tried with that key.
    with pytest.raises(InvalidToken):
        verifier.verify(token(ec_key(), PULL, now=NOW), NOW)


def test_access_claim() -> None:
    grants = parse_access([access("repository", "a", "pull"), access("repository", "a", "push"), access("x", "y")])
    assert grants.allows("repository", "a", "pull") and grants.allows("repository", "a", "push")
    assert parse_access([access("repository", "a", "*")]).allows("repository", "a", "delete")
    for bad in ([{"type": "repository"}], ["x"], [{"type": "r", "name": "a", "actions": "pull"}]):
        with pytest.raises(InvalidToken, match="malformed entry"):
            parse_access(bad)


def test_key_files(tmp_path: Path) -> None:
    signer = ec_key()
    both = tmp_path / "both.pem"
    both.write_bytes(certificate_pem(signer) + public_pem(rsa_key()))
    assert len(load_public_keys(str(both))) == 2
    cases = {
        "missing.pem": None,
        "empty.pem": b"hello\n",
        "private.pem": private_pem(signer),
        "garbage.pem": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    }
    for name, data in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(ValueError, match=str(path)):
            load_public_keys(str(path))


def test_imports_without_the_reactor() -> None:
    code = "import sys, kraken.registry.tokens, kraken.registry.htpasswd, kraken.registry.auth; "
    code += "assert 'twisted.internet.reactor' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
