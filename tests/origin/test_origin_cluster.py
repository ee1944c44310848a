"""OriginRing on a Clock: placement, health, finding itself, copies to replicas; the cluster config keys."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from kraken import config as kconfig
from kraken.cluster.config import ClusterConfig, HealthConfig
from kraken.cluster.ring import Ring
from kraken.core import Digest
from kraken.origin.client import check_origins, origin_urls
from kraken.origin.cluster import OriginRing
from kraken.origin.config import OriginConfig

ME = "10.0.0.1:15002"
OTHERS = ["10.0.0.2:15002", "10.0.0.3:15002"]
NS = "team/app"


class FakeOrigin:
    def __init__(self, member: str, fleet: Fleet) -> None:
        self.member = member
        self.fleet = fleet

    async def health(self) -> bool:
        self.fleet.checked.append(self.member)
        return self.member not in self.fleet.down

    async def upload(self, namespace: str, digest: Digest, path: str, size: int, *, replica: int = 0) -> None:
        if self.member in self.fleet.down:
            raise ConnectionRefusedError(f"{self.member} is down")
        self.fleet.copies.append((self.member, replica, namespace, digest, path, size))


class Fleet:
    def __init__(self) -> None:
        self.down: set[str] = set()
        self.checked: list[str] = []
        self.copies: list[tuple[str, int, str, Digest, str, int]] = []

    def client_for(self, member: str) -> Any:
        return FakeOrigin(member, self)


def ring(config: ClusterConfig | None, fleet: Fleet, clock: Clock, **kw: Any) -> OriginRing:
    return OriginRing(
        config,
        me=kw.pop("me", ME),
        clock=clock,
        client_for=fleet.client_for,
        blob_path=lambda d: f"/cache/{d.hex}",
        **kw,
    )


def digest_placed(members: list[str], first: str, replicas: int = 2) -> Digest:
    """A digest whose placement starts with ``first``."""
    r = Ring(members, replicas)
    for i in range(1000):
        d = Digest.from_bytes(b"%d" % i)
        if r.placement(d)[0] == first:
            return d
    raise AssertionError("no such digest")


def test_without_a_cluster_the_origin_is_alone() -> None:
    clock = Clock()
    origin = ring(None, Fleet(), clock)
    origin.startService()
    d = Digest.from_bytes(b"x")
    assert origin.locations(d) == [ME]
    assert origin.others(d) == []
    assert origin.stats().members == 1
    assert clock.getDelayedCalls() == []  # nothing to check, nothing to resolve
    origin.stopService()


def test_locations_follow_the_ring_and_skip_an_unhealthy_member() -> None:
    clock = Clock()
    fleet = Fleet()
    members = [ME, *OTHERS]
    config = ClusterConfig(hosts=tuple(members), replicas=2, health=HealthConfig(fails=2, passes=1))
    origin = ring(config, fleet, clock)
    origin.startService()
    try:
        d = digest_placed(members, OTHERS[0])
        placement = Ring(members, 2).placement(d)
        assert origin.locations(d) == placement

        fleet.down.add(OTHERS[0])
        clock.advance(10)  # one failed check: still healthy
        assert origin.locations(d) == placement
        clock.advance(10)  # two: unhealthy
        assert origin.locations(d) == [m for m in placement if m != OTHERS[0]]
        assert origin.stats().unhealthy == 1
        assert ME not in fleet.checked  # an origin does not check itself over HTTP

        fleet.down.clear()
        clock.advance(10)  # one pass is enough here
        assert origin.locations(d) == placement
    finally:
        origin.stopService()


def test_copies_go_to_the_other_healthy_replicas_numbered_in_ring_order() -> None:
    clock = Clock()
    fleet = Fleet()
    members = [ME, *OTHERS]
    origin = ring(ClusterConfig(hosts=tuple(members), replicas=3), fleet, clock)
    d = digest_placed(members, ME, replicas=3)
    others = [m for m in Ring(members, 3).placement(d) if m != ME]

    done = Deferred.fromCoroutine(origin.replicate(NS, d, 42))
    assert done.called
    assert [(m, k) for m, k, *_ in fleet.copies] == [(others[0], 1), (others[1], 2)]
    assert {(ns, dg, path, size) for _m, _k, ns, dg, path, size in fleet.copies} == {(NS, d, f"/cache/{d.hex}", 42)}
    assert origin.stats().replicated == 2


def test_a_failed_copy_is_counted_and_does_not_raise() -> None:
    fleet = Fleet()
    members = [ME, *OTHERS]
    origin = ring(ClusterConfig(hosts=tuple(members), replicas=3), fleet, Clock())
    fleet.down.add(OTHERS[1])
    d = digest_placed(members, ME, replicas=3)
    done = Deferred.fromCoroutine(origin.replicate(NS, d, 1))
    assert done.called and done.result is None
    stats = origin.stats()
    assert (stats.replicated, stats.replica_failures) == (1, 1)


def test_a_replica_placed_elsewhere_copies_to_the_members_before_and_after_it() -> None:
    fleet = Fleet()
    members = [ME, *OTHERS]
    origin = ring(ClusterConfig(hosts=tuple(members), replicas=2), fleet, Clock())
    d = digest_placed(members, OTHERS[0])
    placement = Ring(members, 2).placement(d)
    Deferred.fromCoroutine(origin.replicate(NS, d, 1))
    assert [m for m, *_ in fleet.copies] == [m for m in placement if m != ME]


# ----------------------------------------------------------------------------- finding itself in DNS


def resolver(answers: dict[str, Iterable[str] | Deferred[Iterable[str]]]) -> Any:
    async def resolve(name: str) -> Iterable[str]:
        answer = answers[name]
        if isinstance(answer, Deferred):
            return await answer
        return answer

    return resolve


def test_an_origin_found_in_dns_stays() -> None:
    clock = Clock()
    lost: list[str] = []
    config = ClusterConfig(dns="origins.test:15002", replicas=2)
    origin = ring(
        config, Fleet(), clock, resolve=resolver({"origins.test": ["10.0.0.2", "10.0.0.1"]}), on_lost=lost.append
    )
    origin.startService()
    try:
        assert lost == []
        assert origin.ring.members == (ME, OTHERS[0])
    finally:
        origin.stopService()


def test_an_origin_missing_from_dns_gives_up() -> None:
    clock = Clock()
    lost: list[str] = []
    config = ClusterConfig(dns="origins.test:15002")
    origin = ring(config, Fleet(), clock, resolve=resolver({"origins.test": ["10.0.0.2"]}), on_lost=lost.append)
    origin.startService()
    try:
        assert len(lost) == 1 and "do not include this origin (10.0.0.1:15002)" in lost[0]
    finally:
        origin.stopService()


def test_an_origin_whose_dns_never_answers_gives_up_after_the_timeout() -> None:
    clock = Clock()
    lost: list[str] = []
    config = ClusterConfig(dns="origins.test:15002")
    never: Deferred[Iterable[str]] = Deferred()
    origin = ring(
        config, Fleet(), clock, resolve=resolver({"origins.test": never}), on_lost=lost.append, find_self_timeout=60
    )
    origin.startService()
    try:
        clock.advance(59)
        assert lost == []
        clock.advance(1)
        assert len(lost) == 1 and "no members within 60s" in lost[0]
    finally:
        origin.stopService()


def test_stopping_while_looking_for_itself_is_quiet() -> None:
    clock = Clock()
    lost: list[str] = []
    never: Deferred[Iterable[str]] = Deferred()
    origin = ring(
        ClusterConfig(dns="origins.test:15002"),
        Fleet(),
        clock,
        resolve=resolver({"origins.test": never}),
        on_lost=lost.append,
    )
    origin.startService()
    origin.stopService()
    clock.advance(120)
    assert lost == []
    assert [c for c in clock.getDelayedCalls() if c.active()] == []


# ----------------------------------------------------------------------------- config


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "origin.yaml"
    path.write_text(text)
    return str(path)


def test_a_static_cluster_must_name_this_origin(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "advertise: '10.0.0.9:15002'\ncluster:\n  hosts: ['10.0.0.1:15002', '10.0.0.2:15002']\n",
    )
    with pytest.raises(kconfig.ConfigError, match=r"origin\.yaml.*must include this origin's advertise address"):
        kconfig.build(OriginConfig, kconfig.load(path))


def test_a_cluster_section_builds(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "advertise: '10.0.0.1:15002'\n"
        "cluster:\n  hosts: ['10.0.0.1:15002', '10.0.0.2:15002']\n  replicas: 2\n  scheme: https\n"
        "  health: {fails: 1}\n"
        "writeback:\n  replica_delay: 10m\n",
    )
    cfg = kconfig.build(OriginConfig, kconfig.load(path))
    assert cfg.cluster is not None
    assert (cfg.cluster.replicas, cfg.cluster.health.fails, cfg.cluster.url("a:1")) == (2, 1, "https://a:1")
    assert cfg.writeback.replica_delay == 600.0


def test_a_bad_cluster_key_names_it(tmp_path: Path) -> None:
    path = write(tmp_path, "advertise: 'o:1'\ncluster:\n  hosts: ['o:1']\n  scheme: ftp\n")
    with pytest.raises(kconfig.ConfigError, match=r"cluster:.*scheme|cluster\.scheme"):
        kconfig.build(OriginConfig, kconfig.load(path))


def test_a_client_origin_is_one_url_or_a_list() -> None:
    assert origin_urls("http://o:1/") == ("http://o:1",)
    assert origin_urls(("http://o:1", "https://p:2")) == ("http://o:1", "https://p:2")

    class Attribute:
        name = "origin"

    check_origins(None, Attribute(), ("http://o:1", "https://p:2"))  # type: ignore[arg-type]
    for bad in ((), ("o:1",), ("http://o:1/path",)):
        with pytest.raises(ValueError, match="origin"):
            check_origins(None, Attribute(), bad)  # type: ignore[arg-type]
