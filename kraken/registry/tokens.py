"""Docker registry bearer tokens: JWTs from an external token service.

A token is accepted when it is signed (RS256/384/512 or ES256/384/512, what
the configured key's type allows) by one of the configured public keys or
certificates, its ``iss`` is the configured issuer, its ``aud`` names the
configured audience, and the injected clock is within ``[nbf - leeway,
exp + leeway]`` (``exp`` is required). Its ``access`` claim lists what it
grants: ``[{"type": "repository", "name": "a/b", "actions": ["pull",
"push"]}, {"type": "registry", "name": "catalog", "actions": ["*"]}]``
(distribution's ``auth/token.md``); ``*`` grants every action.

``TokenKeys`` holds the keys of the configured files and reads them again on
``reload`` (SIGHUP): a file that cannot be read or holds no usable key keeps
the previous keys, and the log says why, naming the file.

Pure apart from reading key files: no reactor, times come from the caller.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import attrs
import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from twisted.logger import Logger

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

_RSA_ALGORITHMS = ["RS256", "RS384", "RS512"]
_EC_ALGORITHMS = ["ES256", "ES384", "ES512"]
log = Logger(namespace="kraken.registry.auth")

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)


class InvalidToken(Exception):
    """A token that must not be used (the message says why, for the client and the log)."""


def load_public_keys(path: str) -> list[PublicKey]:
    """The RSA or EC public keys of a PEM file of certificates and/or public
    keys; ValueError naming ``path`` when there is none or one is unusable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror}") from None
    keys = []
    for number, block in enumerate(_PEM_BLOCK.finditer(data), 1):
        kind = block.group(1).decode()
        if kind not in ("CERTIFICATE", "PUBLIC KEY"):
            raise ValueError(f"{path}: a {kind} block (only CERTIFICATE and PUBLIC KEY are used; never a private key)")
        try:
            if kind == "CERTIFICATE":
                key: Any = x509.load_pem_x509_certificate(block.group(0)).public_key()
            else:
                key = load_pem_public_key(block.group(0))
        except (ValueError, UnsupportedAlgorithm):
            raise ValueError(f"{path}: PEM block {number} is not a readable {kind}") from None
        if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            raise ValueError(f"{path}: a {type(key).__name__}: only RSA and EC keys sign registry tokens")
        keys.append(key)
    if not keys:
        raise ValueError(f"{path}: no PEM certificate or public key found")
    return keys


@attrs.frozen
class Grants:
    """What a token allows: ``(type, name) -> actions``."""

    actions: dict[tuple[str, str], frozenset[str]] = attrs.field(factory=dict)

    def allows(self, type: str, name: str, action: str) -> bool:
        granted = self.actions.get((type, name), frozenset())
        return action in granted or "*" in granted


@attrs.frozen
class TokenVerifier:
    keys: tuple[PublicKey, ...]
    issuer: str
    audience: str
    leeway: float = 60.0

    def verify(self, token: str, now: float) -> Grants:
        """The grants of ``token`` at time ``now``, or ``InvalidToken``."""
        claims = self._signed_claims(token)
        exp: Any = claims.get("exp")
        nbf: Any = claims.get("nbf")
        if not _is_number(exp):
            raise InvalidToken("the token has no expiry time (exp)")
        if now > float(exp) + self.leeway:
            raise InvalidToken("the token has expired")
        if nbf is not None and (not _is_number(nbf) or now < float(nbf) - self.leeway):
            raise InvalidToken("the token is not valid yet (nbf)")
        return parse_access(claims.get("access", []))

    def _signed_claims(self, token: str) -> dict[str, Any]:
        options: Any = {"verify_exp": False, "verify_nbf": False, "verify_iat": False, "require": ["iss", "aud"]}
        last: str = "no configured key verifies its signature"
        for key in self.keys:
            algorithms = _RSA_ALGORITHMS if isinstance(key, rsa.RSAPublicKey) else _EC_ALGORITHMS
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, key, algorithms=algorithms, audience=self.audience, issuer=self.issuer, options=options
                )
                return claims
            except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError):
                continue
            except jwt.InvalidAudienceError:
                last = f"the token is not for audience {self.audience!r}"
            except jwt.InvalidIssuerError:
                last = f"the token is not from issuer {self.issuer!r}"
            except jwt.InvalidTokenError as e:
                last = f"malformed token: {e}"
            raise InvalidToken(last)
        raise InvalidToken(last)


def parse_access(access: Any) -> Grants:
    """The ``access`` claim as ``Grants`` (InvalidToken when it is not a list of entries)."""
    if not isinstance(access, list):
        raise InvalidToken("the token's access claim is not a list")
    actions: dict[tuple[str, str], frozenset[str]] = {}
    for entry in access:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("type"), str)
            and isinstance(entry.get("name"), str)
            and _strings(entry.get("actions", []))
        ):
            raise InvalidToken("the token's access claim has a malformed entry")
        key = (entry["type"], entry["name"])
        actions[key] = actions.get(key, frozenset()) | frozenset(entry.get("actions", []))
    return Grants(actions)


def _strings(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) for v in values)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def all_keys(paths: Iterable[str]) -> tuple[PublicKey, ...]:
    """The keys of every file in ``paths``."""
    return tuple(k for path in paths for k in load_public_keys(path))


class TokenKeys:
    """The public keys of the token service's PEM files (``paths``), read at start and on ``reload``."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = tuple(paths)
        self.keys = all_keys(self.paths)

    def reload(self) -> bool:
        """Read the files again; on any problem log it (naming the file) and keep the previous keys."""
        try:
            keys = all_keys(self.paths)
        except ValueError as e:
            log.error("token keys not reloaded, keeping the previous {count}: {why}", count=len(self.keys), why=str(e))
            return False
        self.keys = keys
        log.info("token keys reloaded from {paths}: {count} keys", paths=", ".join(self.paths), count=len(keys))
        return True
