"""Access rules for HTTP Basic users (``kraken.registry.access``): the rules alone, their config (errors
naming the file and key), and the real ``RegistryAPI`` through StubTreq: 403 DENIED where no rule grants,
mounts, the catalog, anonymous pull."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from twisted.internet import task
from twisted.logger import capturedLogs
from twisted.python import usage

from kraken import config
from kraken.proxy.config import ProxyConfig
from kraken.proxy.http import registry_auth
from kraken.registry.access import AccessRules, Rule
from kraken.registry.auth import RegistryAuth
from kraken.workers import InlineWorker

from .conftest import Registry, Resp

RULES = AccessRules(
    [
        Rule.make(["alice"], [], "team-a/*", ["pull", "push"]),
        Rule.make([], ["readers"], "^(team-a|team-b)/[a-z]+$", ["pull"]),
        Rule.make(["alice"], [], "*", ["pull"]),
        Rule.make(["*"], [], "public/*", ["pull"]),
    ],
    {"readers": ["bob"]},
)


@pytest.mark.parametrize(
    ("user", "repository", "actions"),
    [
        ("alice", "team-a/app", {"pull", "push"}),
        ("alice", "team-a/tools/lint", {"pull", "push"}),  # * crosses /
        ("alice", "team-b/app", {"pull"}),  # the first rule does not cover it; the third does
        ("alice", "team-ab", {"pull"}),
        ("bob", "team-a/app", {"pull"}),
        ("bob", "team-b/app", {"pull"}),
        ("bob", "team-b/app/sub", set()),  # the regex is matched against the whole name
        ("bob", "other/app", set()),  # default deny
        ("carol", "public/base", {"pull"}),  # "*": every user
        ("carol", "team-a/app", set()),
    ],
)
def test_first_matching_rule_decides(user: str, repository: str, actions: set[str]) -> None:
    assert RULES.actions(user, repository) == actions


def test_only_repositories_are_granted() -> None:
    grants = RULES.grants("alice")
    assert grants.allows("repository", "team-a/x", "push")
    assert not grants.allows("repository", "team-a/x", "delete")
    assert not grants.allows("registry", "catalog", "*"), "with rules, the catalog is nobody's"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([], [], "*", ["pull"]), "a rule names users or groups"),
        ((["a"], [], "*", ["pull", "write"]), "actions: unknown action 'write' (known: pull, push, delete)"),
        ((["a"], [], "^team-(", ["pull"]), "repositories '^team-(': not a regular expression (missing ),"),
        ((["a"], [], "", ["pull"]), "repositories must not be empty"),
    ],
)
def test_bad_rules(args: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        Rule.make(*args)
    assert str(info.value).startswith(message)


# -- the config ---------------------------------------------------------------


def users_file(tmp_path: Path, *users: str) -> Path:
    path = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    path.write_text("".join(f"{user}:{hashed}\n" for user in users))
    return path


def proxy_config(tmp_path: Path, auth: str) -> Any:
    path = tmp_path / "proxy.yaml"
    path.write_text(f"auth:\n  htpasswd: {users_file(tmp_path, 'alice', 'bob')}\n{auth}")
    return config.load_or_usage_error(ProxyConfig, str(path))


ACCESS = """\
  groups: {readers: [bob]}
  access:
    - {users: [alice], repositories: "team-a/*", actions: [pull, push]}
    - {users: [alice], repositories: "^secret/.*", actions: []}
    - {groups: [readers], users: [alice], repositories: "*", actions: [pull]}
"""


def test_config_rules(tmp_path: Path) -> None:
    cfg = proxy_config(tmp_path, ACCESS)
    rules = cfg.auth.rules()
    assert rules is not None and len(rules.rules) == 3
    assert rules.actions("bob", "x") == {"pull"} and rules.actions("alice", "team-a/x") == {"pull", "push"}
    assert rules.actions("alice", "secret/x") == set() and rules.actions("bob", "secret/x") == {"pull"}
    with capturedLogs() as events:
        assert registry_auth(cfg.auth, clock=task.Clock(), worker=InlineWorker()) is not None
    assert [e["access"] for e in events if "access" in e] == ["3 access rules"]
    assert proxy_config(tmp_path, "").auth.rules() is None, "no rules: every user may do everything"


@pytest.mark.parametrize(
    ("auth", "fragment"),
    [
        ("  access: [{users: [a], repositories: '^(', actions: [pull]}]\n",
         "auth.access.0: repositories '^(': not a regular expression"),
        ("  access: [{users: [a], repositories: '*', actions: [pull, pish]}]\n",
         "auth.access.0: actions: unknown action 'pish'"),
        ("  access: [{users: [a], actions: [pull]}]\n", "auth.access.0: missing required key 'repositories'"),
        ("  access: [{users: [a], repositories: '*', actions: [pull], repos: x}]\n",
         "auth.access.0.repos: unknown key"),
        ("  access: [{groups: [ops], repositories: '*', actions: [pull]}]\n",
         "auth: access.0.groups: no group 'ops' in auth.groups"),
        ("  groups: {ops: bob}\n", "auth.groups.ops: must be a list"),
    ],
)  # fmt: skip
def test_config_errors_name_the_file_and_key(tmp_path: Path, auth: str, fragment: str) -> None:
    with pytest.raises(usage.UsageError) as info:
        proxy_config(tmp_path, auth)
    assert str(tmp_path / "proxy.yaml") in str(info.value)
    assert fragment in str(info.value)


def test_rules_need_htpasswd(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text("auth:\n  access: [{users: [a], repositories: '*', actions: [pull]}]\n")
    with pytest.raises(usage.UsageError, match="access and groups need htpasswd"):
        config.load_or_usage_error(ProxyConfig, str(path))


# -- on the registry API ------------------------------------------------------


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:pw".encode()).decode()}


def as_user(registry: Registry, user: str | None) -> Registry:
    """``registry`` (the same API and store) whose requests carry ``user``'s credentials (None: none)."""
    view = Registry.__new__(Registry)
    view.__dict__.update(registry.__dict__)
    plain = registry.request

    def request(method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Resp:
        return plain(method, path, body, {**(basic(user) if user else {}), **(headers or {})})

    view.request = request  # type: ignore[method-assign]
    return view


@pytest.fixture
def ruled(tmp_path: Path, clock: task.Clock) -> Any:
    def make(anonymous_pull: bool = False) -> Registry:
        cfg = proxy_config(tmp_path, ACCESS + ("  anonymous_pull: true\n" if anonymous_pull else ""))
        auth = registry_auth(cfg.auth, clock=clock, worker=InlineWorker())
        assert isinstance(auth, RegistryAuth)
        return Registry(tmp_path / "registry", clock, auth=auth)

    return make


def denied(r: Resp, *detail: tuple[str, str, str]) -> None:
    assert r.code == 403, (r.code, r.body)
    assert r.header("WWW-Authenticate") is None, "not a challenge: the credentials are right"
    (error,) = r.json()["errors"]
    assert error["code"] == "DENIED"
    assert error["detail"] == [{"Type": t, "Name": n, "Action": a} for t, n, a in detail]


def test_rules_on_every_route(ruled: Any) -> None:
    registry = ruled()
    alice, bob = as_user(registry, "alice"), as_user(registry, "bob")
    manifest = alice.image("team-a/app")
    assert alice.put_manifest("team-a/app", "v1", manifest).code == 201
    assert bob.get("/v2/team-a/app/manifests/v1").code == 200
    assert bob.get("/v2/").code == 200, "any user may ask who they are"
    push = ("repository", "team-a/app", "push")
    with capturedLogs() as events:
        denied(bob.request("POST", "/v2/team-a/app/blobs/uploads/"), push)
    assert any("user 'bob' has no repository:team-a/app:push access" in e.get("why", "") for e in events)
    denied(bob.put_manifest("team-a/app", "v2", manifest), push)
    denied(alice.request("POST", "/v2/team-b/app/blobs/uploads/"), ("repository", "team-b/app", "push"))
    denied(alice.request("DELETE", "/v2/team-a/app/manifests/v1"), ("repository", "team-a/app", "delete"))
    denied(alice.get("/v2/_catalog"), ("registry", "catalog", "*"))
    assert bob.get("/v2/team-a/app/tags/list").json()["tags"] == ["v1"], "nothing stored changed"
    assert as_user(registry, "carol").get("/v2/team-a/app/tags/list").code == 401, "not in the htpasswd file"


def test_a_mount_needs_pull_on_the_source(ruled: Any) -> None:
    registry = ruled()
    alice, bob = as_user(registry, "alice"), as_user(registry, "bob")
    digest = alice.push_blob("team-a/src", b"layer")
    r = alice.request("POST", f"/v2/team-a/dst/blobs/uploads/?mount={digest}&from=team-a/src")
    assert (r.code, r.header("Docker-Content-Digest")) == (201, str(digest))
    # alice may push to team-a/ but not read secret/: the mount becomes a plain upload.
    r = alice.request("POST", f"/v2/team-a/dst2/blobs/uploads/?mount={digest}&from=secret/src")
    assert (r.code, r.header("Docker-Content-Digest")) == (202, None)
    denied(bob.request("POST", f"/v2/team-a/dst3/blobs/uploads/?mount={digest}&from=team-a/src"),
           ("repository", "team-a/dst3", "push"))  # fmt: skip


def test_anonymous_pull_still_applies(ruled: Any) -> None:
    registry = ruled(anonymous_pull=True)
    alice, nobody = as_user(registry, "alice"), as_user(registry, None)
    manifest = alice.image("team-a/app")
    assert alice.put_manifest("team-a/app", "v1", manifest).code == 201
    assert nobody.get("/v2/team-a/app/manifests/v1").code == 200
    assert nobody.request("POST", "/v2/team-a/app/blobs/uploads/").code == 401
