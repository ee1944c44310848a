"""Authentication and authorisation on the real ``RegistryAPI`` (``kraken.registry.auth``), through
StubTreq: the challenges, the OCI ``UNAUTHORIZED`` bodies, the scopes each route needs, anonymous pull
and cross-repository mounts."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from twisted.internet import task
from twisted.logger import capturedLogs

from kraken.core import Digest
from kraken.registry.auth import BasicCredentials, BearerCredentials, RegistryAuth
from kraken.registry.htpasswd import HtpasswdFile
from kraken.registry.tokens import TokenVerifier
from kraken.workers import InlineWorker

from .auth_keys import ISSUER, REALM, SERVICE, access, rsa_key, token
from .conftest import Registry, Resp, encode
from .memory import MemorySource

NOW = 1_800_000_000.0
BASIC_CHALLENGE = 'Basic realm="kraken test"'


def bearer_challenge(scope: str | None, error: str | None = None) -> str:
    value = f'Bearer realm="{REALM}",service="{SERVICE}"'
    value += f',scope="{scope}"' if scope else ""
    return value + (f',error="{error}"' if error else "")


def authorizing(registry: Registry, value: str) -> Registry:
    """``registry`` whose requests all carry ``Authorization: value`` (unless given another)."""
    plain = registry.request

    def request(method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Resp:
        return plain(method, path, body, {"Authorization": value, **(headers or {})})

    registry.request = request  # type: ignore[method-assign]
    return registry


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def unauthorized(r: Resp, challenge: str, detail: list[tuple[str, str, str]] | None) -> None:
    assert r.code == 401, (r.code, r.body)
    assert r.all("WWW-Authenticate") == [challenge]
    assert r.header("Content-Type") == "application/json"
    assert r.header("Docker-Distribution-API-Version") == "registry/2.0"
    (error,) = r.json()["errors"]
    assert error["code"] == "UNAUTHORIZED"
    expected = None if detail is None else [{"Type": t, "Name": n, "Action": a} for t, n, a in detail]
    assert error.get("detail") == expected


# -- HTTP Basic -------------------------------------------------------------


@pytest.fixture
def basic_registry(tmp_path: Path, clock: task.Clock) -> Any:
    path = tmp_path / "htpasswd"
    path.write_text(f"alice:{bcrypt.hashpw(b's3cret', bcrypt.gensalt(4)).decode()}\n")

    def make(anonymous_pull: bool = False, header: str | None = None) -> Registry:
        users = BasicCredentials(HtpasswdFile(str(path)), "kraken test", InlineWorker())
        auth = RegistryAuth(users, anonymous_pull=anonymous_pull)
        reg = Registry(tmp_path / f"r{anonymous_pull}{header}", clock, auth=auth)
        return reg if header is None else authorizing(reg, header)

    return make


def test_basic_challenges_every_route_without_credentials(basic_registry: Any) -> None:
    reg = basic_registry()
    unauthorized(reg.get("/v2/"), BASIC_CHALLENGE, None)
    unauthorized(reg.get("/v2/a/manifests/v1"), BASIC_CHALLENGE, [("repository", "a", "pull")])
    head = reg.head("/v2/a/manifests/v1")
    assert (head.code, head.all("WWW-Authenticate")) == (401, [BASIC_CHALLENGE])
    unauthorized(reg.get("/v2/_catalog"), BASIC_CHALLENGE, [("registry", "catalog", "*")])
    push = [("repository", "a/b", "pull"), ("repository", "a/b", "push")]
    unauthorized(reg.request("POST", "/v2/a/b/blobs/uploads/"), BASIC_CHALLENGE, push)
    assert reg.get("/health").code == 200, "outside /v2"
    assert reg.get("/v2/a/nothing").code == 404, "no endpoint, nothing to authorise"


@pytest.mark.parametrize("header", [basic("alice", "wrong"), basic("bob", "s3cret"), "Basic !!!", basic("alice", "")])
def test_basic_wrong_credentials(basic_registry: Any, header: str) -> None:
    reg = basic_registry(header=header)
    with capturedLogs() as events:
        r = reg.get("/v2/a/tags/list")
    unauthorized(r, BASIC_CHALLENGE, [("repository", "a", "pull")])
    assert r.json()["errors"][0]["message"] in ("invalid username or password (user 'alice')",
                                                "invalid username or password (user 'bob')",
                                                "malformed Basic credentials")  # fmt: skip
    assert [e["why"] for e in events if "why" in e] == [r.json()["errors"][0]["message"]]
    assert "s3cret" not in str(events) and "wrong" not in str(events), "passwords are never logged"


def test_basic_user_pushes_and_pulls(basic_registry: Any) -> None:
    reg = basic_registry(header=basic("alice", "s3cret"))
    assert (reg.get("/v2/").code, reg.get("/v2/").json()) == (200, {})
    manifest = reg.image("team/app")
    assert reg.put_manifest("team/app", "v1", manifest).code == 201
    assert reg.get("/v2/team/app/manifests/v1").body == encode(manifest)
    assert reg.get("/v2/_catalog").json() == {"repositories": ["team/app"]}


def test_anonymous_pull(basic_registry: Any) -> None:
    pusher = basic_registry(anonymous_pull=True, header=basic("alice", "s3cret"))
    manifest = pusher.image("team/app")
    assert pusher.put_manifest("team/app", "v1", manifest).code == 201
    anonymous = Registry.__new__(Registry)
    anonymous.__dict__.update(pusher.__dict__)
    del anonymous.__dict__["request"]  # the same API, without credentials
    assert anonymous.get("/v2/team/app/manifests/v1").body == encode(manifest)
    assert anonymous.head(f"/v2/team/app/blobs/{manifest['config']['digest']}").code == 200
    assert anonymous.get("/v2/team/app/tags/list").code == 200
    unauthorized(anonymous.get("/v2/"), BASIC_CHALLENGE, None)
    unauthorized(anonymous.get("/v2/_catalog"), BASIC_CHALLENGE, [("registry", "catalog", "*")])
    push = [("repository", "team/app", "pull"), ("repository", "team/app", "push")]
    unauthorized(anonymous.put_manifest("team/app", "v2", manifest), BASIC_CHALLENGE, push)
    wrong = authorizing(anonymous, basic("alice", "nope"))
    unauthorized(wrong.get("/v2/team/app/tags/list"), BASIC_CHALLENGE, [("repository", "team/app", "pull")])


# -- Bearer tokens ----------------------------------------------------------

KEY = rsa_key()


@pytest.fixture
def token_registry(tmp_path: Path, clock: task.Clock) -> Any:
    clock.advance(NOW)
    verifier = TokenVerifier((KEY.public_key(),), issuer=ISSUER, audience=SERVICE, leeway=30.0)
    shared = MemorySource(str(tmp_path / "blobs"))

    def make(*grants: dict[str, Any], anonymous_pull: bool = False, **claims: Any) -> Registry:
        bearer = BearerCredentials(verifier, realm=REALM, service=SERVICE, clock=clock)
        reg = Registry(
            tmp_path / f"r{len(list(tmp_path.iterdir()))}",
            clock,
            auth=RegistryAuth(bearer, anonymous_pull=anonymous_pull),
            source=shared,
        )
        return authorizing(reg, "Bearer " + token(KEY, list(grants), now=NOW, **claims)) if grants or claims else reg

    return make


def test_bearer_challenges(token_registry: Any) -> None:
    reg = token_registry()
    unauthorized(reg.get("/v2/"), bearer_challenge(None), None)
    unauthorized(
        reg.get("/v2/a/b/manifests/v1"), bearer_challenge("repository:a/b:pull"), [("repository", "a/b", "pull")]
    )
    push = [("repository", "a/b", "pull"), ("repository", "a/b", "push")]
    unauthorized(reg.request("PUT", "/v2/a/b/manifests/v1", b"{}"), bearer_challenge("repository:a/b:pull,push"), push)
    unauthorized(reg.request("PATCH", "/v2/a/b/blobs/uploads/x"), bearer_challenge("repository:a/b:pull,push"), push)
    unauthorized(reg.get("/v2/_catalog"), bearer_challenge("registry:catalog:*"), [("registry", "catalog", "*")])
    delete = [("repository", "a/b", "delete")]
    unauthorized(reg.request("DELETE", "/v2/a/b/manifests/v1"), bearer_challenge("repository:a/b:delete"), delete)
    mount = "/v2/a/b/blobs/uploads/?mount=sha256:" + "0" * 64 + "&from=c"
    mount_access = [*push, ("repository", "c", "pull")]
    unauthorized(
        reg.request("POST", mount), bearer_challenge("repository:a/b:pull,push repository:c:pull"), mount_access
    )
    unauthorized(authorizing(reg, basic("a", "b")).get("/v2/"), bearer_challenge(None), None)


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"ttl": -31}, "invalid token: the token has expired"),
        ({"nbf": NOW + 31}, "invalid token: the token is not valid yet (nbf)"),
        ({"audience": "elsewhere"}, "invalid token: the token is not for audience 'kraken-test'"),
        ({"issuer": "mallory"}, "invalid token: the token is not from issuer 'test-token-issuer'"),
    ],
)
def test_bearer_invalid_tokens(token_registry: Any, claims: dict[str, Any], message: str) -> None:
    reg = token_registry(access("repository", "a", "pull"), **claims)
    r = reg.get("/v2/a/tags/list")
    unauthorized(r, bearer_challenge("repository:a:pull", "invalid_token"), [("repository", "a", "pull")])
    assert r.json()["errors"][0]["message"] == message


def test_bearer_token_from_another_key_and_garbage(token_registry: Any) -> None:
    for value in ("Bearer " + token(rsa_key(), [access("repository", "a", "pull")], now=NOW), "Bearer x.y.z"):
        r = authorizing(token_registry(), value).get("/v2/a/tags/list")
        unauthorized(r, bearer_challenge("repository:a:pull", "invalid_token"), [("repository", "a", "pull")])


def test_bearer_within_leeway(token_registry: Any) -> None:
    reg = token_registry(access("repository", "a", "pull"), ttl=-29, nbf=NOW + 29)
    assert reg.get("/v2/a/tags/list").code == 404, "past the handler: NAME_UNKNOWN"


def test_bearer_scopes_per_route(token_registry: Any) -> None:
    pusher = token_registry(access("repository", "a/b", "pull", "push"))
    manifest = pusher.image("a/b")
    assert pusher.put_manifest("a/b", "v1", manifest).code == 201
    assert pusher.get("/v2/").code == 200, "any valid token opens the base endpoint"
    push = [("repository", "a/b", "pull"), ("repository", "a/b", "push")]
    insufficient = bearer_challenge("repository:a/b:pull,push", "insufficient_scope")
    puller = token_registry(access("repository", "a/b", "pull"), access("repository", "other", "push"))
    r = puller.get("/v2/a/b/manifests/v1")
    assert (r.code, r.body) == (200, encode(manifest))
    unauthorized(puller.put_manifest("a/b", "v2", manifest), insufficient, push)
    unauthorized(puller.request("POST", "/v2/a/b/blobs/uploads/"), insufficient, push)
    unauthorized(puller.request("POST", "/v2/a/b/blobs/uploads/"), insufficient, push)
    only_push = token_registry(access("repository", "a/b", "push"))
    unauthorized(only_push.request("POST", "/v2/a/b/blobs/uploads/"), insufficient, push)
    unauthorized(puller.get("/v2/_catalog"), bearer_challenge("registry:catalog:*", "insufficient_scope"),
                 [("registry", "catalog", "*")])  # fmt: skip
    assert token_registry(access("registry", "catalog", "*")).get("/v2/_catalog").code == 200
    unauthorized(
        puller.get("/v2/a/c/tags/list"),
        bearer_challenge("repository:a/c:pull", "insufficient_scope"),
        [("repository", "a/c", "pull")],
    )
    assert token_registry(access("repository", "a/b", "*")).request("POST", "/v2/a/b/blobs/uploads/").code == 202


def test_mount_needs_pull_on_the_source(token_registry: Any) -> None:
    source = token_registry(access("repository", "src", "pull", "push"))
    digest = source.push_blob("src", b"secret layer")
    mount = f"/v2/dst/blobs/uploads/?mount={digest}&from=src"
    allowed = token_registry(access("repository", "dst", "pull", "push"), access("repository", "src", "pull"))
    r = allowed.request("POST", mount)
    assert (r.code, r.header("Docker-Content-Digest")) == (201, str(digest))
    for reg, path in [
        (token_registry(access("repository", "dst", "pull", "push")), mount),
        (token_registry(access("repository", "dst", "pull", "push"), access("repository", "src", "push")), mount),
        (allowed, f"/v2/dst/blobs/uploads/?mount={digest}"),  # an anonymous mount names no source
        (allowed, f"/v2/dst/blobs/uploads/?mount={digest}&from=Bad..Name"),
    ]:
        with capturedLogs() as events:
            r = reg.request("POST", path)
        assert r.code == 202, "a normal upload instead: the blob is not mounted"
        assert "/blobs/uploads/" in (r.header("Location") or "")
        assert r.header("Docker-Content-Digest") is None
        assert any("not allowed" in e["log_format"] for e in events)


def test_bearer_anonymous_pull(token_registry: Any) -> None:
    reg = token_registry(anonymous_pull=True)
    assert reg.get(f"/v2/a/blobs/{Digest.from_bytes(b'x')}").error_code == "BLOB_UNKNOWN"
    unauthorized(reg.get("/v2/"), bearer_challenge(None), None)
    push = [("repository", "a", "pull"), ("repository", "a", "push")]
    unauthorized(reg.request("POST", "/v2/a/blobs/uploads/"), bearer_challenge("repository:a:pull,push"), push)


def test_invalid_names_are_refused_before_auth(token_registry: Any) -> None:
    r = token_registry().get("/v2/Bad..Name/tags/list")
    assert (r.code, r.error_code) == (400, "NAME_INVALID")
