"""Preheat (``kraken.proxy.preheat``): notification envelopes and the preheat API, over fake origins that
fetch on miss from a fake backend, served beside the registry API as the proxy serves them."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from registry.memory import MemorySource
from results import result_of
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python import usage

from kraken.core import Digest
from kraken.proxy.config import PreheatConfig, RegistryConfig
from kraken.proxy.http import beside, proxy_api
from kraken.proxy.preheat import NotificationInvalid, PreheatAPI, Preheater, Target, parse_envelope
from kraken.proxy.tap import Options
from kraken.registry.auth import BasicCredentials, RegistryAuth
from kraken.registry.htpasswd import HtpasswdFile
from kraken.registry.manifests import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST
from kraken.store import UploadArea
from kraken.workers import InlineWorker

BASE = "http://proxy.test"

#: A layer push event of docker/distribution's example (docs/notifications.md), which holds two of them.
LAYER_EVENT = """{
         "id": "asdf-asdf-asdf-asdf-@ID@",
         "timestamp": "2006-01-02T15:04:05Z",
         "action": "push",
         "target": {
            "mediaType": "application/vnd.docker.container.image.rootfs.diff+x-gtar",
            "length": @LENGTH@,
            "digest": "sha256:c3b3692957d439ac1928219a83fac91e7bf96c153725526874673ae1f2023f8d5",
            "repository": "library/test",
            "url": "https://example.com/v2/library/test/blobs/sha256:c3b3692957d439ac1928219a83fac91e7bf96c153725526874673ae1f2023f8d5"
         },
         "request": {"id": "asdfasdf", "addr": "client.local", "host": "registrycluster.local", "method": "PUT",
                     "useragent": "test/0.1"},
         "actor": {"name": "test-actor"},
         "source": {"addr": "hostname.local:port"}
      }"""

#: docker/distribution's example envelope (docs/notifications.md), as it sends it: a schema 1 manifest push
#: and two layer pushes.
DISTRIBUTION_EXAMPLE = """{
   "events": [
      {
         "id": "asdf-asdf-asdf-asdf-0",
         "timestamp": "2006-01-02T15:04:05Z",
         "action": "push",
         "target": {
            "mediaType": "application/vnd.docker.distribution.manifest.v1+json",
            "length": 1,
            "digest": "sha256:fea8895f450959fa676bcc1df0611ea93823a735a01205fd8622846041d0c7cf",
            "repository": "library/test",
            "url": "https://example.com/v2/library/test/manifests/sha256:c3b3692957d439ac1928219a83fac91e7bf96c153725526874673ae1f2023f8d5"
         },
         "request": {
            "id": "asdfasdf",
            "addr": "client.local",
            "host": "registrycluster.local",
            "method": "PUT",
            "useragent": "test/0.1"
         },
         "actor": {
            "name": "test-actor"
         },
         "source": {
            "addr": "hostname.local:port"
         }
      },
      LAYER_1,
      LAYER_2
   ]
}"""
for _number in (1, 2):
    _event = LAYER_EVENT.replace("@ID@", str(_number)).replace("@LENGTH@", str(_number + 1))
    DISTRIBUTION_EXAMPLE = DISTRIBUTION_EXAMPLE.replace(f"LAYER_{_number}", _event)


def harbor_envelope(repository: str, tag: str, digest: str = "") -> bytes:
    """What Harbor's Kraken provider POSTs (src/pkg/p2p/preheat/provider/kraken.go): always the schema 2
    media type; the digest empty when it preheats by tag."""
    return json.dumps({
        "events": [{
            "id": "3b5e8a42-7f3a-4c2e-9d1a-7c1f0f6f2d11",
            "timestamp": "2026-12-07T13:30:00Z",
            "action": "push",
            "target": {
                "mediaType": DOCKER_MANIFEST,
                "digest": digest,
                "repository": repository,
                "url": f"https://harbor.example.com/v2/{repository}/manifests/{digest or tag}",
                "tag": tag,
            },
        }]
    }).encode()  # fmt: skip


class FakeOrigins:
    """Origins that fetch a blob from ``backend`` the first time it is asked for (``fetched``); ``gate``,
    when set, holds every fetch until fired."""

    def __init__(self) -> None:
        self.backend: dict[Digest, bytes] = {}
        self.held: dict[Digest, bytes] = {}
        self.fetched: list[Digest] = []
        self.gate: Deferred[None] | None = None
        self.in_flight = 0
        self.most_in_flight = 0

    def add(self, body: bytes) -> Digest:
        digest = Digest.from_bytes(body)
        self.backend[digest] = body
        return digest

    async def _present(self, digest: Digest) -> bytes | None:
        if digest not in self.held and digest in self.backend:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            if self.gate is not None:
                await self.gate
            self.in_flight -= 1
            self.held[digest] = self.backend[digest]
            self.fetched.append(digest)
        return self.held.get(digest)

    async def stat(self, namespace: str, digest: Digest) -> int | None:
        body = await self._present(digest)
        return None if body is None else len(body)

    async def read_small(self, namespace: str, digest: Digest, limit: int) -> bytes | None:
        return await self._present(digest)


class FakeTags:
    def __init__(self) -> None:
        self.tags: dict[tuple[str, str], Digest] = {}

    async def get_tag(self, repo: str, tag: str) -> Digest | None:
        return self.tags.get((repo, tag))


def image(
    origins: FakeOrigins, seed: str, media_type: str = OCI_MANIFEST, shared: bytes = b"shared"
) -> tuple[Digest, set[Digest]]:
    """An image manifest in the backend: its digest and its blobs (config and two layers, one of them shared)."""
    config, own = origins.add(f"config {seed}".encode()), origins.add(f"layer {seed}".encode())
    common = origins.add(shared)
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "config": {"mediaType": OCI_CONFIG, "digest": str(config), "size": 1},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": str(d), "size": 1} for d in (own, common)],
    }
    if media_type != OCI_MANIFEST:
        doc["mediaType"] = media_type
    return origins.add(json.dumps(doc).encode()), {config, own, common}


def index(origins: FakeOrigins, children: list[Digest]) -> Digest:
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": str(c), "size": 1} for c in children],
    }
    return origins.add(json.dumps(doc).encode())


class Proxy:
    def __init__(
        self, tmp_path: Path, auth: RegistryAuth | None = None, concurrency: int = 8, token: bytes | None = None
    ) -> None:
        self.origins, self.tags = FakeOrigins(), FakeTags()
        self.preheater = Preheater(self.origins, self.tags, concurrency=concurrency)
        source = MemorySource(str(tmp_path / "blobs"))
        api = proxy_api(
            source, UploadArea(str(tmp_path / "up"), InlineWorker()), clock=Clock(), config=RegistryConfig()
        )
        self.stub = StubTreq(beside(api.resource(), PreheatAPI(self.preheater, auth=auth, token=token).resource()))

    def call(self, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, Any]:
        resp = result_of(self.stub.request(method, BASE + path, data=body, headers=headers), self.stub.flush)
        content = result_of(self.stub.content(resp), self.stub.flush)
        return resp.code, json.loads(content) if content.startswith(b"{") else content


# -- envelopes ---------------------------------------------------------------


def test_docker_distribution_example_queues_its_manifest_push_only() -> None:
    events = json.loads(DISTRIBUTION_EXAMPLE)["events"]
    assert [(e["id"], e["target"]["length"]) for e in events] == [(f"asdf-asdf-asdf-asdf-{i}", i + 1) for i in range(3)]
    targets, ignored = parse_envelope(DISTRIBUTION_EXAMPLE.encode())
    digest = Digest.parse("sha256:fea8895f450959fa676bcc1df0611ea93823a735a01205fd8622846041d0c7cf")
    assert (targets, ignored) == ([Target("library/test", digest)], 2)


def test_harbor_envelope_by_tag_has_no_digest() -> None:
    assert parse_envelope(harbor_envelope("library/app", "v1")) == ([Target("library/app", None, "v1")], 0)


def test_pulls_deletes_and_layers_are_ignored() -> None:
    events = [
        {"action": "pull", "target": {"mediaType": DOCKER_MANIFEST, "repository": "a", "tag": "v1"}},
        {"action": "delete", "target": {"mediaType": DOCKER_MANIFEST, "repository": "a", "tag": "v1"}},
        {"action": "push", "target": {"mediaType": OCI_LAYER_GZIP, "repository": "a", "digest": "junk"}},
    ]
    assert parse_envelope(json.dumps({"events": events}).encode()) == ([], 3)


BAD = [
    (b"{not json", "the notification envelope is not valid JSON"),
    (b"[]", "the notification envelope must be a JSON object"),
    (b'{"events": {}}', 'the notification envelope has no "events" list'),
    (b'{"events": [{"action": "push"}]}', "event 0 has no target object"),
    (harbor_envelope("library/app", "v1", "sha256:short"), "event 0: digest is not a valid digest"),
    (harbor_envelope("Not/Valid", "v1"), "event 0: repository is not a valid repository name"),
    (harbor_envelope("library/app", ""), "event 0: a digest or a tag is needed"),
]


@pytest.mark.parametrize(("body", "message"), BAD)
def test_bad_envelopes_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(NotificationInvalid) as e:
        parse_envelope(body)
    assert e.value.message == message


@pytest.mark.parametrize(("body", "message"), BAD)
def test_a_bad_envelope_is_400_and_starts_nothing(tmp_path: Path, body: bytes, message: str) -> None:
    proxy = Proxy(tmp_path)
    code, answer = proxy.call("POST", "/registry/notifications", body)
    assert (code, answer["errors"][0]["code"], answer["errors"][0]["message"]) == (400, "NOTIFICATION_INVALID", message)
    assert proxy.origins.fetched == [] and proxy.preheater.running == set()


# -- the closure walk --------------------------------------------------------


def test_the_closure_of_an_index_is_every_child_and_blob_once(tmp_path: Path) -> None:
    origins = FakeOrigins()
    amd, amd_blobs = image(origins, "amd64")
    arm, arm_blobs = image(origins, "arm64", media_type=DOCKER_MANIFEST)
    top = index(origins, [amd, arm, amd])
    manifests, blobs = result_of(Preheater(origins, FakeTags()).closure("a", top))
    assert manifests == [top, amd, arm]
    assert len(blobs) == len(set(blobs)) and set(blobs) == amd_blobs | arm_blobs


def test_a_preheat_makes_the_origins_fetch_every_blob(tmp_path: Path) -> None:
    proxy = Proxy(tmp_path)
    digest, blobs = image(proxy.origins, "x")
    proxy.tags.tags[("library/app", "v1")] = digest
    code, answer = proxy.call("POST", "/registry/notifications", harbor_envelope("library/app", "v1"))
    assert (code, answer) == (200, {"queued": [{"repository": "library/app", "tag": "v1"}], "ignored": 0})
    assert set(proxy.origins.held) == {digest, *blobs}
    assert (proxy.preheater.done, proxy.preheater.failed) == (1, 0)


def test_the_answer_comes_before_the_work_which_is_bounded(tmp_path: Path) -> None:
    proxy = Proxy(tmp_path, concurrency=2)
    proxy.origins.gate = Deferred()
    digest, blobs = image(proxy.origins, "y")
    proxy.origins.held[digest] = proxy.origins.backend[digest]  # the manifest is there, the blobs are not
    code, _ = proxy.call("POST", "/registry/notifications", harbor_envelope("a", "v1", str(digest)))
    assert code == 200 and len(proxy.preheater.running) == 1 and proxy.origins.fetched == []
    assert proxy.origins.in_flight == 2
    proxy.origins.gate.callback(None)
    assert set(proxy.origins.fetched) == blobs and proxy.preheater.running == set()
    assert proxy.origins.most_in_flight == 2


def test_a_missing_blob_fails_the_preheat_in_the_log(tmp_path: Path) -> None:
    proxy = Proxy(tmp_path)
    digest, blobs = image(proxy.origins, "z")
    del proxy.origins.backend[sorted(blobs)[0]]
    code, _ = proxy.call("POST", "/registry/notifications", harbor_envelope("a", "v1", str(digest)))
    assert code == 200 and (proxy.preheater.done, proxy.preheater.failed) == (0, 1)


# -- the preheat API ---------------------------------------------------------


def test_preheat_by_tag_answers_what_it_queued(tmp_path: Path) -> None:
    proxy = Proxy(tmp_path)
    digest, blobs = image(proxy.origins, "t")
    proxy.tags.tags[("a/b", "v2")] = digest
    code, answer = proxy.call("POST", "/registry/preheat", json.dumps({"repository": "a/b", "tag": "v2"}).encode())
    assert (code, answer) == (202, {"queued": [{"repository": "a/b", "tag": "v2", "digest": str(digest)}]})
    assert set(proxy.origins.held) == {digest, *blobs}


def test_preheat_by_digest_and_unknown_tag(tmp_path: Path) -> None:
    proxy = Proxy(tmp_path)
    digest, _ = image(proxy.origins, "d")
    code, answer = proxy.call(
        "POST", "/registry/preheat", json.dumps({"repository": "a", "digest": str(digest)}).encode()
    )
    assert (code, answer) == (202, {"queued": [{"repository": "a", "digest": str(digest)}]})
    code, answer = proxy.call("POST", "/registry/preheat", json.dumps({"repository": "a", "tag": "nope"}).encode())
    assert (code, answer["errors"][0]["code"]) == (404, "MANIFEST_UNKNOWN")
    code, answer = proxy.call(
        "POST", "/registry/preheat", json.dumps({"repository": "a", "tag": "t", "digest": str(digest)}).encode()
    )
    assert (code, answer["errors"][0]["message"]) == (400, "give a digest or a tag, not both")


def test_harbor_health_check_and_the_registry_api_are_beside(tmp_path: Path) -> None:
    proxy = Proxy(tmp_path)
    assert proxy.call("GET", "/health") == (200, b"OK\n")
    assert proxy.call("GET", "/v2/")[0] == 200
    assert proxy.call("GET", "/registry/notifications")[0] == 405


HARBOR_BASIC = "Basic " + base64.b64encode(b"harbor:s3cret").decode()


def htpasswd_auth(tmp_path: Path) -> RegistryAuth:
    path = tmp_path / "htpasswd"
    path.write_text(f"harbor:{bcrypt.hashpw(b's3cret', bcrypt.gensalt(4)).decode()}\n")
    return RegistryAuth(BasicCredentials(HtpasswdFile(str(path)), "kraken", InlineWorker()))


def test_with_auth_push_credentials_are_needed(tmp_path: Path) -> None:
    proxy = Proxy(tmp_path, auth=htpasswd_auth(tmp_path))
    digest, _ = image(proxy.origins, "s")
    body = harbor_envelope("a", "v1", str(digest))
    code, answer = proxy.call("POST", "/registry/notifications", body)
    assert (code, answer["errors"][0]["code"]) == (401, "UNAUTHORIZED") and proxy.origins.fetched == []
    assert proxy.call("POST", "/registry/notifications", body, Authorization=HARBOR_BASIC)[0] == 200
    assert proxy.preheater.done == 1


# -- the shared secret (preheat.token_file) and the config -------------------

SECRET = b"harbor-preheat-0123456789"


def test_the_preheat_token_alone_lets_harbor_in(tmp_path: Path) -> None:
    proxy = Proxy(tmp_path, token=SECRET)
    digest, _ = image(proxy.origins, "k")
    body = harbor_envelope("a", "v1", str(digest))
    for wrong in ({}, {"Authorization": "Bearer not-the-secret"}, {"Authorization": "Basic aGFyYm9yOnMzY3JldA=="}):
        code, answer = proxy.call("POST", "/registry/notifications", body, **wrong)
        assert (code, answer["errors"][0]["code"]) == (401, "UNAUTHORIZED")
    assert proxy.origins.fetched == []
    assert proxy.call("POST", "/registry/notifications", body, Authorization="Bearer " + SECRET.decode())[0] == 200
    assert proxy.preheater.done == 1


def test_with_auth_the_token_or_credentials(tmp_path: Path) -> None:
    proxy = Proxy(tmp_path, auth=htpasswd_auth(tmp_path), token=SECRET)
    digest, _ = image(proxy.origins, "m")
    body = json.dumps({"repository": "a", "digest": str(digest)}).encode()
    assert proxy.call("POST", "/registry/preheat", body)[0] == 401
    assert proxy.call("POST", "/registry/preheat", body, Authorization="Bearer " + SECRET.decode())[0] == 202
    assert proxy.call("POST", "/registry/preheat", body, Authorization=HARBOR_BASIC)[0] == 202


def parse_config(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    options = Options()
    options.parseOptions(["--config", str(path)])
    return options["parsed"]


def test_preheat_config(tmp_path: Path) -> None:
    assert parse_config(tmp_path, "").preheat == PreheatConfig()
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    preheat = parse_config(tmp_path, f"preheat: {{concurrency: 3, token_file: {tmp_path / 'secret'}}}\n").preheat
    assert (preheat.concurrency, preheat.token()) == (3, SECRET)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("preheat: {concurrency: 0}\n", ": preheat: concurrency must be positive"),
        ("preheat: {token_file: /nonexistent/secret}\n", ": preheat: token_file: cannot read /nonexistent/secret"),
        ("preheat: {token_file: SHORT}\n", ": preheat: token_file: "),
    ],
)
def test_bad_preheat_config_names_file_and_key(tmp_path: Path, text: str, where: str) -> None:
    (tmp_path / "short").write_bytes(b"short\n")
    with pytest.raises(usage.UsageError) as e:
        parse_config(tmp_path, text.replace("SHORT", str(tmp_path / "short")))
    assert str(e.value).startswith(str(tmp_path / "proxy.yaml") + where)
