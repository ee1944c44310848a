"""Authenticated pushes and pulls at the proxy, with real clients against a real herd.

- HTTP Basic: the herd's proxy reads an htpasswd file (bcrypt); python-dxf and skopeo push and pull
  with the right password; a wrong password or none gets 401 UNAUTHORIZED with the Basic challenge.
- Bearer tokens: a tiny token service runs in this test (twisted.web on loopback, tokens signed with
  pyjwt); skopeo and python-dxf follow the proxy's Bearer challenge to it with Basic credentials, get a
  token for the challenged scope and retry. A request without a token, or with the token service's
  answer to a wrong password, gets the clear UNAUTHORIZED.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from typing import Any

import attrs
import bcrypt
import jwt
import pytest
import pytest_twisted
import requests
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from dxf import DXF
from dxf.exceptions import DXFUnauthorizedError
from twisted.internet import ssl
from twisted.internet.threads import deferToThread
from twisted.protocols import portforward
from twisted.web import resource, server

from kraken.cli.image import write_layout

from ._tools import check_dir_copy, run_process

USER, PASSWORD = "builder", "correct horse"
SERVICE = "kraken-integration"
ISSUER = "integration-token-service"


def htpasswd(path: str) -> str:
    with open(path, "w") as f:
        f.write(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(5)).decode()}\n")
    return path


@attrs.frozen
class TLSRelay:
    """A TLS listener on loopback (a trustme certificate for 127.0.0.1) relaying to the herd's proxy:
    python-dxf sends credentials over HTTPS only."""

    address: str
    ca: str


def tls_options(tmp_path: Any) -> Any:
    """Server TLS options with a trustme certificate for 127.0.0.1; the CA is written to ``tmp_path/ca.pem``."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert = ssl.PrivateCertificate.loadPEM(ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.bytes())
    # Name the ALPN protocol: Twisted 26.10's CertificateOptions without acceptableProtocols answers a
    # client that offers ALPN (requests, curl) with a TLS "internal error" alert.
    return ssl.CertificateOptions(
        privateKey=cert.privateKey.original, certificate=cert.original, acceptableProtocols=[b"http/1.1"]
    )


def tls_relay(reactor: Any, target_port: int, tmp_path: Any, options: Any) -> tuple[TLSRelay, Any]:
    port = reactor.listenSSL(0, portforward.ProxyFactory("127.0.0.1", target_port), options, interface="127.0.0.1")
    return TLSRelay(f"127.0.0.1:{port.getHost().port}", str(tmp_path / "ca.pem")), port


def dxf_client(relay: TLSRelay, repo: str, password: str = PASSWORD) -> DXF:
    def auth(dxf: DXF, response: Any) -> None:
        dxf.authenticate(USER, password, response=response)

    return DXF(relay.address, repo, auth=auth, tlsverify=relay.ca)


def dxf_round_trip(relay: TLSRelay, repo: str, tmp_path: Any) -> None:
    """Push a blob and a tag with python-dxf, then pull both back."""
    path = tmp_path / f"blob-{uuid.uuid4().hex[:6]}"
    data = os.urandom(300_000)
    path.write_bytes(data)
    dxf = dxf_client(relay, repo)
    digest = dxf.push_blob(str(path))
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    dxf.set_alias("v1", digest)
    puller = dxf_client(relay, repo)
    assert puller.get_alias("v1") == [digest]
    assert b"".join(puller.pull_blob(digest)) == data


def refused(registry: str, path: str, challenge_start: str, headers: dict[str, str] | None = None) -> Any:
    """GET ``path`` and insist on the 401 UNAUTHORIZED answer and its challenge; returns the error."""
    r = requests.get(f"http://{registry}{path}", headers=headers or {}, timeout=30)
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.headers["WWW-Authenticate"].startswith(challenge_start), r.headers["WWW-Authenticate"]
    (error,) = r.json()["errors"]
    assert error["code"] == "UNAUTHORIZED"
    return error


@pytest_twisted.ensureDeferred
async def test_basic_auth(herd_launcher: Any, reactor: Any, tmp_path: Any) -> None:
    users = htpasswd(str(tmp_path / "htpasswd"))
    herd = herd_launcher.start(str(tmp_path / "herd"), agents=1, extra={"proxy": {"auth": {"htpasswd": users}}})
    relay, port = tls_relay(reactor, herd.proxy_port, tmp_path, tls_options(tmp_path))
    try:
        await _basic_clients(herd.registry, relay, reactor, tmp_path)
    finally:
        await port.stopListening()


async def _basic_clients(registry: str, relay: TLSRelay, reactor: Any, tmp_path: Any) -> None:
    repo = f"auth/basic-{uuid.uuid4().hex[:8]}"
    await deferToThread(dxf_round_trip, relay, repo, tmp_path)

    layout = write_layout(str(tmp_path / "layout"), layers=2, seed=f"basic-{uuid.uuid4()}")
    ref = f"docker://{registry}/{repo}:img"
    creds = f"{USER}:{PASSWORD}"
    await _skopeo(reactor, "copy", "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{layout.path}:v1", ref)
    await _skopeo(reactor, "copy", "--src-tls-verify=false", "--src-creds", creds, ref, f"dir:{tmp_path / 'copy'}")
    assert len(check_dir_copy(str(tmp_path / "copy"))[1]) == 3

    error = await deferToThread(refused, registry, f"/v2/{repo}/tags/list", 'Basic realm="Kraken registry"')
    assert error["detail"] == [{"Type": "repository", "Name": repo, "Action": "pull"}]
    wrong = "Basic " + base64.b64encode(f"{USER}:wrong".encode()).decode()
    error = await deferToThread(refused, registry, f"/v2/{repo}/tags/list", "Basic ", {"Authorization": wrong})
    assert error["message"] == f"invalid username or password (user {USER!r})"
    await deferToThread(_dxf_is_refused, relay, repo)
    err = await _skopeo(reactor, "inspect", "--tls-verify=false", "--creds", f"{USER}:wrong", ref, ok=False)
    assert "authentication required" in err or "invalid username or password" in err, err


def _dxf_is_refused(relay: TLSRelay, repo: str) -> None:
    with pytest.raises(DXFUnauthorizedError):
        dxf_client(relay, repo, password="wrong").list_aliases()


# -- a token service ----------------------------------------------------------


class TokenService(resource.Resource):
    """``GET /token?service=...&scope=...``: with the right Basic credentials, a token granting every
    requested scope; anonymous, a token granting nothing; a wrong password, 401 (as docker's auth does)."""

    isLeaf = True

    def __init__(self, key: Any) -> None:
        super().__init__()
        self.key = key
        self.requests: list[tuple[str, list[str]]] = []

    def render_GET(self, request: Any) -> bytes:
        scopes = [s.decode() for s in request.args.get(b"scope", [])]
        user = request.getUser().decode()
        self.requests.append((user, scopes))
        if user and (user, request.getPassword().decode()) != (USER, PASSWORD):
            request.setResponseCode(401)
            return b'{"details":"wrong password"}'
        grants = [] if not user else [_access(s) for scope in scopes for s in scope.split(" ")]
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": SERVICE, "sub": user, "iat": now, "nbf": now, "exp": now + 300}
        token = jwt.encode({**claims, "access": grants}, self.key, algorithm="ES256")
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()


def _access(scope: str) -> dict[str, Any]:
    type_, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return {"type": type_, "name": name, "actions": actions.split(",")}


@pytest_twisted.ensureDeferred
async def test_token_auth(herd_launcher: Any, reactor: Any, tmp_path: Any) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "signer.pem").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    service = TokenService(key)
    options = tls_options(tmp_path)
    # python-dxf asks a token service over HTTPS only.
    port = reactor.listenSSL(0, server.Site(service), options, interface="127.0.0.1")
    try:
        realm = f"https://127.0.0.1:{port.getHost().port}/token"
        token = {"realm": realm, "service": SERVICE, "issuer": ISSUER, "certificates": str(tmp_path / "signer.pem")}
        herd = herd_launcher.start(str(tmp_path / "herd"), agents=1, extra={"proxy": {"auth": {"token": token}}})
        await _token_clients(herd.registry, reactor, service, realm, tmp_path, options)
    finally:
        await port.stopListening()


async def _token_clients(
    registry: str, reactor: Any, service: TokenService, realm: str, tmp_path: Any, options: Any
) -> None:
    repo = f"auth/token-{uuid.uuid4().hex[:8]}"
    layout = write_layout(str(tmp_path / "layout"), layers=2, seed=f"token-{uuid.uuid4()}")
    ref = f"docker://{registry}/{repo}:img"
    creds = f"{USER}:{PASSWORD}"
    await _skopeo(reactor, "copy", "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{layout.path}:v1", ref)
    assert (USER, [f"repository:{repo}:pull,push"]) in service.requests, service.requests
    await _skopeo(reactor, "copy", "--src-tls-verify=false", "--src-creds", creds, ref, f"dir:{tmp_path / 'copy'}")
    assert len(check_dir_copy(str(tmp_path / "copy"))[1]) == 3
    relay, port = tls_relay(reactor, int(registry.rsplit(":", 1)[1]), tmp_path, options)
    try:
        await deferToThread(dxf_round_trip, relay, repo + "-dxf", tmp_path)
    finally:
        await port.stopListening()

    challenge = f'Bearer realm="{realm}",service="{SERVICE}",scope="repository:{repo}:pull"'
    error = await deferToThread(refused, registry, f"/v2/{repo}/tags/list", challenge)
    assert error["detail"] == [{"Type": "repository", "Name": repo, "Action": "pull"}]
    err = await _skopeo(reactor, "inspect", "--tls-verify=false", "--creds", f"{USER}:wrong", ref, ok=False)
    assert "401" in err or "unauthorized" in err.lower(), err
    # An anonymous token grants nothing: the proxy answers UNAUTHORIZED, insufficient scope.
    err = await _skopeo(reactor, "inspect", "--tls-verify=false", "--no-creds", ref, ok=False)
    assert "authentication required" in err or "insufficient scope" in err, err


async def _skopeo(reactor: Any, *args: str, ok: bool = True) -> str:
    """Run skopeo; insist on success (or, ``ok=False``, on failure); returns its stderr."""
    code, _out, err = await run_process(reactor, ["skopeo", *args])
    text = err.decode(errors="replace")
    assert (code == 0) == ok, f"skopeo {' '.join(args)} exited {code}:\n{text[-4000:]}"
    return text
