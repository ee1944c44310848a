"""Listings and referrers on the agent's registry: ``tags/list``, ``_catalog`` and ``referrers/<digest>``, asked of
the build-index and answered by the handlers the proxy uses (``kraken.registry.http_listings``): the same
pagination (``n``, ``last``, ``Link``), errors, ``artifactType`` filtering and ``OCI-Filters-Applied``; bounded by
``answer_timeout`` like a tag (a silent or failing build-index is 503), with ``?ns=`` too.

The registry as ``kraken.agent.tap`` builds it: ``Namespaced(RegistryAPI(read_only=True))`` over ``AgentSource``,
a fake scheduler and a fake build-index behind StubTreq."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agent_fakes import FakeScheduler, FakeTags, TickingClient
from twisted.internet import task
from twisted.internet.defer import Deferred

from kraken.agent.mirror import Namespaced
from kraken.agent.source import AgentSource, Mirror
from kraken.agent.tap import READ_ONLY_MESSAGE
from kraken.core import Digest
from kraken.net import HTTPStatusError
from kraken.registry.http import RegistryAPI
from kraken.registry.manifests import OCI_INDEX, OCI_MANIFEST
from kraken.registry.source import ManifestRecord, Page

REPO = "library/alpine"
TIMEOUT = 3.0
SUBJECT = Digest.from_bytes(b"the image")
SBOM = "application/vnd.example.sbom"
SIGNATURE = "application/vnd.example.signature"


def _page(items: list[str], n: int | None, last: str | None) -> Page:
    """A page as the build-index cuts it: sorted, after ``last``, at most ``n``."""
    after = [i for i in sorted(items) if last is None or i > last]
    size = len(after) if n is None else n
    return Page(tuple(after[:size]), len(after) > size)


class FakeIndex(FakeTags):
    """The build-index's listings; ``stalled`` never answers, ``failing`` raises."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, list[ManifestRecord]] = {}
        self.stalled = False
        self.failing: Exception | None = None
        self.asked: list[tuple[Any, ...]] = []

    async def _ask(self, *question: Any) -> None:
        self.asked.append(question)
        if self.stalled:
            await Deferred()
        if self.failing is not None:
            raise self.failing

    async def list_tags(self, repo: str, n: int | None, last: str | None) -> Page | None:
        await self._ask("tags", repo, n, last)
        tags = [t for r, t in self.tags if r == repo]
        return _page(tags, n, last) if tags else None

    async def list_repositories(self, n: int | None, last: str | None) -> Page:
        await self._ask("repositories", n, last)
        return _page(sorted({r for r, _ in self.tags}), n, last)

    async def referrers(self, repo: str, subject: Digest) -> list[ManifestRecord]:
        await self._ask("referrers", repo, subject)
        return [r for r in self.records.get(repo, []) if r.subject == subject]


class Agent:
    def __init__(self, tmp_path: Path, clock: task.Clock) -> None:
        self.index = FakeIndex()
        source = AgentSource(
            FakeScheduler(tmp_path / "cache"),
            self.index,
            worker=None,  # type: ignore[arg-type]  # listings read no file
            max_manifest_size=4 << 20,
            mirror=Mirror(_no_sizes, clock, TIMEOUT),
        )
        api = RegistryAPI(
            source, None, clock=clock, read_only=True, read_only_message=READ_ONLY_MESSAGE, max_page_size=100
        )
        self.client = TickingClient(Namespaced(api.resource()), clock)

    def tag(self, repo: str, *tags: str) -> None:
        for tag in tags:
            self.index.tags[(repo, tag)] = SUBJECT

    def refer(self, repo: str, artifact_type: str, seed: bytes) -> ManifestRecord:
        record = ManifestRecord(Digest.from_bytes(seed), OCI_MANIFEST, len(seed), artifact_type, SUBJECT)
        self.index.records.setdefault(repo, []).append(record)
        return record


async def _no_sizes(namespace: str, digest: Digest) -> int | None:
    raise AssertionError("a listing asks no blob's size")


@pytest.fixture
def agent(tmp_path: Path, clock: task.Clock) -> Agent:
    return Agent(tmp_path, clock)


# -- tags/list and _catalog ---------------------------------------------------------------------------------------


def test_tags_are_listed_and_paginated_with_link(agent: Agent) -> None:
    agent.tag(REPO, "3.20", "3.18", "latest", "3.19")
    r = agent.client.get(f"/v2/{REPO}/tags/list?n=2")
    assert (r.code, r.json()) == (200, {"name": REPO, "tags": ["3.18", "3.19"]})
    assert r.header("Link") == f'</v2/{REPO}/tags/list?n=2&last=3.19>; rel="next"'
    r = agent.client.get(f"/v2/{REPO}/tags/list?n=2&last=3.19")
    assert (r.json()["tags"], r.header("Link")) == (["3.20", "latest"], None)
    r = agent.client.get(f"/v2/{REPO}/tags/list")
    assert (r.json()["tags"], r.header("Link")) == (["3.18", "3.19", "3.20", "latest"], None)
    assert agent.index.asked[0] == ("tags", REPO, 2, None)
    assert agent.index.asked[-1] == ("tags", REPO, 100, None)  # no n: the registry's page size


def test_tags_of_an_unknown_repository_are_name_unknown(agent: Agent) -> None:
    r = agent.client.get("/v2/nobody/here/tags/list")
    assert r.code == 404
    assert r.error_code == "NAME_UNKNOWN"


def test_the_catalog_is_listed_and_paginated_with_link(agent: Agent) -> None:
    for repo in ("b/two", "a/one", "c/three"):
        agent.tag(repo, "v1")
    r = agent.client.get("/v2/_catalog?n=2")
    assert (r.code, r.json()) == (200, {"repositories": ["a/one", "b/two"]})
    assert r.header("Link") == '</v2/_catalog?n=2&last=b/two>; rel="next"'
    r = agent.client.get("/v2/_catalog?n=2&last=b/two")
    assert (r.json()["repositories"], r.header("Link")) == (["c/three"], None)
    assert agent.client.get("/v2/_catalog?n=0").json() == {"repositories": []}


@pytest.mark.parametrize(
    "path,code",
    [
        (f"/v2/{REPO}/tags/list?n=-1", "PAGINATION_NUMBER_INVALID"),
        (f"/v2/{REPO}/tags/list?last=bad%20tag", "TAG_INVALID"),
        ("/v2/_catalog?last=UPPER", "NAME_INVALID"),
        ("/v2/UPPER/tags/list", "NAME_INVALID"),
        (f"/v2/{REPO}/referrers/sha256:nothex", "DIGEST_INVALID"),
    ],
)
def test_bad_listing_requests_are_refused_before_the_build_index_is_asked(agent: Agent, path: str, code: str) -> None:
    r = agent.client.get(path)
    assert r.code == 400
    assert r.error_code == code
    assert agent.index.asked == []


def test_listings_are_read_only(agent: Agent) -> None:
    r = agent.client.request("DELETE", f"/v2/{REPO}/tags/list")
    assert r.code == 405


# -- referrers ----------------------------------------------------------------------------------------------------


def test_referrers_are_an_oci_index(agent: Agent) -> None:
    sbom = agent.refer(REPO, SBOM, b"an sbom")
    signature = agent.refer(REPO, SIGNATURE, b"a signature")
    agent.refer("other/repo", SBOM, b"elsewhere")
    r = agent.client.get(f"/v2/{REPO}/referrers/{SUBJECT}")
    assert r.code == 200
    assert r.header("Content-Type") == OCI_INDEX
    assert r.header("OCI-Filters-Applied") is None
    assert r.json() == {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [sbom.descriptor(), signature.descriptor()],
    }
    assert sbom.descriptor()["artifactType"] == SBOM


def test_referrers_filtered_by_artifact_type(agent: Agent) -> None:
    sbom = agent.refer(REPO, SBOM, b"an sbom")
    agent.refer(REPO, SIGNATURE, b"a signature")
    r = agent.client.get(f"/v2/{REPO}/referrers/{SUBJECT}?artifactType={SBOM}")
    assert r.json()["manifests"] == [sbom.descriptor()]
    assert r.header("OCI-Filters-Applied") == "artifactType"


def test_no_referrers_is_an_empty_index(agent: Agent) -> None:
    r = agent.client.get(f"/v2/{REPO}/referrers/{Digest.from_bytes(b'alone')}")
    assert (r.code, r.json()["manifests"]) == (200, [])


# -- ?ns= and the bound -------------------------------------------------------------------------------------------

LISTINGS = [f"/v2/{REPO}/tags/list", "/v2/_catalog", f"/v2/{REPO}/referrers/{SUBJECT}"]


@pytest.mark.parametrize("path", LISTINGS)
def test_listings_with_ns_are_answered_and_echo_it(agent: Agent, path: str) -> None:
    agent.tag(REPO, "v1")
    agent.refer(REPO, SBOM, b"an sbom")
    r = agent.client.get(f"{path}?ns=docker.io")
    assert r.code == 200
    assert r.header("OCI-Namespace") == "docker.io"
    assert r.json() == agent.client.get(path).json()


def _assert_fall_back(r: Any) -> None:
    assert r.code == 503
    assert r.error_code == "UNKNOWN"
    assert "try its next registry host" in r.json()["errors"][0]["message"]


@pytest.mark.parametrize("path", LISTINGS)
def test_a_silent_build_index_is_503_within_the_bound(agent: Agent, clock: task.Clock, path: str) -> None:
    agent.index.stalled = True
    _assert_fall_back(agent.client.get(f"{path}?ns=docker.io"))
    assert clock.seconds() == pytest.approx(TIMEOUT)


@pytest.mark.parametrize("code", [401, 404, 500])
@pytest.mark.parametrize("path", LISTINGS)
def test_a_build_index_error_is_503_never_relayed(agent: Agent, path: str, code: int) -> None:
    agent.index.failing = HTTPStatusError("GET", "http://build-index/repositories", code, b"nope")
    _assert_fall_back(agent.client.get(path))
