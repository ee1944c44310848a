"""HostList: static lists, DNS names resolved on a Clock, the last good list kept."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cluster_fakes import FakeResolver
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import DNSLookupError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from kraken.cluster.config import ClusterConfig
from kraken.cluster.hosts import HostList, join_member, split_member, system_resolver
from kraken.config import Duration

NAME = "origins.test"


def idle(clock: Clock) -> bool:
    return not [c for c in clock.getDelayedCalls() if c.active()]


def outcome(d: Deferred[Any] | None) -> list[Any]:
    out: list[Any] = []
    if d is not None:
        d.addBoth(out.append)
    return out


class DNSFixture:
    def __init__(self, **kwargs: Any) -> None:
        self.clock = Clock()
        self.resolver = FakeResolver({NAME: ["10.0.0.1", "10.0.0.2"]})
        self.hosts = HostList(
            clock=self.clock, dns=f"{NAME}:15002", resolve=self.resolver, **{"interval": 10.0, **kwargs}
        )
        self.changes: list[tuple[str, ...]] = []
        self.hosts.on_change(self.changes.append)

    def stop(self) -> list[Any]:
        return outcome(self.hosts.stopService())


@pytest.fixture
def fx() -> Iterator[DNSFixture]:
    f = DNSFixture()
    yield f
    if f.hosts.running:
        f.stop()
    assert idle(f.clock), "no timers left behind"


# -- member strings --


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10.0.0.5:15002", ("10.0.0.5", 15002)),
        ("origin-1.example:1", ("origin-1.example", 1)),
        ("[::1]:15002", ("::1", 15002)),
        ("[fd00::5]:65535", ("fd00::5", 65535)),
    ],
)
def test_split_member(text: str, parsed: tuple[str, int]) -> None:
    assert split_member(text) == parsed
    assert join_member(*parsed) == text


@pytest.mark.parametrize(
    "text",
    ["", "host", "host:", ":15002", "host:0", "host:65536", "host:x", "::1:15002", "a b:1", "[::1]",
     "[fe80::1%eth0]:15002", "[origin-1]:15002"],
)  # fmt: skip
def test_split_member_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        split_member(text)


def test_join_member_writes_ipv6_one_way() -> None:
    """A DNS answer's address joins in its canonical form, so one member is never two strings."""
    assert join_member("0:0:0:0:0:0:0:1", 15002) == "[::1]:15002"
    assert join_member("2001:DB8::5", 1) == "[2001:db8::5]:1"


# -- static lists --


def test_a_static_list_is_its_members_and_runs_nothing() -> None:
    clock = Clock()
    hosts = HostList(clock=clock, hosts=["b:2", "a:1", "b:2"])
    assert hosts.static
    assert hosts.members() == ("a:1", "b:2")
    assert outcome(hosts.when_members()) == [("a:1", "b:2")]
    hosts.startService()
    assert hosts.running and idle(clock)
    clock.advance(100)
    assert hosts.members() == ("a:1", "b:2")
    assert outcome(hosts.stopService()) == []  # None: stopped at once
    assert not hosts.running and idle(clock)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"hosts": ["a:1"], "dns": "n:1", "resolve": FakeResolver()}, "exactly one"),
        ({"hosts": []}, "empty"),
        ({"hosts": "a:1"}, "list"),
        ({"hosts": ["a"]}, "host:port"),
        ({"dns": "n:1"}, "resolver"),
        ({"dns": "n", "resolve": FakeResolver()}, "host:port"),
        ({"hosts": ["a:1"], "interval": 0}, "positive"),
        ({"hosts": ["a:1"], "timeout": -1}, "positive"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HostList(clock=Clock(), **kwargs)


# -- DNS lists --


def test_resolves_at_start_then_every_interval(fx: DNSFixture) -> None:
    assert fx.hosts.members() == ()
    fx.hosts.startService()
    assert fx.resolver.calls == [NAME]
    assert fx.hosts.members() == ("10.0.0.1:15002", "10.0.0.2:15002")
    assert fx.changes == [("10.0.0.1:15002", "10.0.0.2:15002")]
    fx.clock.advance(9.9)
    assert fx.resolver.calls == [NAME]
    fx.clock.advance(0.1)
    assert fx.resolver.calls == [NAME, NAME]
    assert len(fx.changes) == 1, "the same answer is no change"


def test_a_changed_answer_is_announced(fx: DNSFixture) -> None:
    fx.hosts.startService()
    fx.resolver.answers[NAME] = ["10.0.0.3", "10.0.0.1", "10.0.0.3"]
    fx.clock.advance(10)
    assert fx.hosts.members() == ("10.0.0.1:15002", "10.0.0.3:15002")
    assert fx.changes[-1] == ("10.0.0.1:15002", "10.0.0.3:15002")
    assert len(fx.changes) == 2


def test_ipv6_addresses_get_brackets(fx: DNSFixture) -> None:
    fx.resolver.answers[NAME] = ["fd00::2", "10.0.0.1"]
    fx.hosts.startService()
    assert fx.hosts.members() == ("10.0.0.1:15002", "[fd00::2]:15002")


def test_a_failed_resolution_keeps_the_last_good_list(fx: DNSFixture) -> None:
    fx.hosts.startService()
    good = fx.hosts.members()
    fx.resolver.answers[NAME] = DNSLookupError("no such name")
    with capturedLogs() as events:
        fx.clock.advance(10)
        fx.clock.advance(10)
    assert fx.hosts.members() == good
    assert len(fx.changes) == 1
    failed = [e for e in events if "failed" in e.get("log_format", "")]
    assert len(failed) == 2 and failed[0]["name"] == NAME and "no such name" in failed[0]["error"]
    assert fx.hosts.failures == 2
    # and the timer kept going: the name comes back
    fx.resolver.answers[NAME] = ["10.0.0.9"]
    fx.clock.advance(10)
    assert fx.hosts.members() == ("10.0.0.9:15002",)


def test_an_empty_answer_keeps_the_last_good_list(fx: DNSFixture) -> None:
    fx.hosts.startService()
    good = fx.hosts.members()
    fx.resolver.answers[NAME] = []
    with capturedLogs() as events:
        fx.clock.advance(10)
    assert fx.hosts.members() == good
    assert any("no address" in e.get("log_format", "") for e in events)


def test_a_resolution_that_never_answers_times_out() -> None:
    fx = DNSFixture(timeout=2.0)
    fx.resolver.answers[NAME] = FakeResolver.HANG
    fx.hosts.startService()
    assert fx.hosts.members() == ()
    fx.clock.advance(2.0)
    assert fx.resolver.cancelled == 1 and fx.hosts.failures == 1
    fx.resolver.answers[NAME] = ["10.0.0.7"]
    fx.clock.advance(8.0)  # the next round is on time
    assert fx.hosts.members() == ("10.0.0.7:15002",)
    assert fx.stop() == [None]
    assert idle(fx.clock)


def test_stopping_during_a_resolution_ends_it(fx: DNSFixture) -> None:
    fx.resolver.answers[NAME] = FakeResolver.HANG
    fx.hosts.startService()
    stopped = fx.stop()
    assert stopped == [None]
    assert fx.resolver.cancelled == 1
    assert fx.hosts.failures == 0, "stopping is not a failure"
    assert idle(fx.clock)


def test_when_members_waits_for_the_first_good_list(fx: DNSFixture) -> None:
    fx.resolver.answers[NAME] = DNSLookupError("not yet")
    first, second, gone = fx.hosts.when_members(), fx.hosts.when_members(), fx.hosts.when_members()
    got, got2, cancelled = outcome(first), outcome(second), outcome(gone)
    fx.hosts.startService()
    gone.cancel()
    assert got == [] and len(cancelled) == 1
    fx.resolver.answers[NAME] = ["10.0.0.1"]
    fx.clock.advance(10)
    assert got == got2 == [("10.0.0.1:15002",)]
    assert outcome(fx.hosts.when_members()) == [("10.0.0.1:15002",)]


def test_a_failing_listener_is_logged_and_the_others_still_hear(fx: DNSFixture) -> None:
    def broken(members: tuple[str, ...]) -> None:
        raise RuntimeError("boom")

    later: list[tuple[str, ...]] = []
    fx.hosts.remove_listener(fx.changes.append)
    fx.hosts.on_change(broken)
    fx.hosts.on_change(later.append)
    with capturedLogs() as events:
        fx.hosts.startService()
    assert later == [("10.0.0.1:15002", "10.0.0.2:15002")]
    assert any("listener failed" in e.get("log_format", "") for e in events)
    assert fx.changes == []


def test_from_config() -> None:
    clock = Clock()
    static = HostList.from_config(ClusterConfig(hosts=("a:1", "b:2")), clock=clock)
    assert static.members() == ("a:1", "b:2")
    resolver = FakeResolver({"n": ["10.1.1.1"]})
    dns = HostList.from_config(ClusterConfig(dns="n:7", refresh_interval=Duration(30.0)), clock=clock, resolve=resolver)
    assert dns.step == 30.0
    dns.startService()
    assert dns.members() == ("10.1.1.1:7",)
    dns.stopService()
    assert idle(clock)


# -- the system resolver --


class FakeNameResolver:
    def __init__(self, addresses: list[Any]) -> None:
        self.addresses = addresses
        self.asked: list[str] = []

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0, **kwargs: Any) -> Any:
        self.asked.append(hostName)
        receiver.resolutionBegan(None)
        for a in self.addresses:
            receiver.addressResolved(a)
        receiver.resolutionComplete()
        return receiver


class FakeReactor:
    def __init__(self, addresses: list[Any]) -> None:
        self.nameResolver = FakeNameResolver(addresses)


def test_system_resolver_gives_every_address_once() -> None:
    from results import result_of

    reactor = FakeReactor(
        [IPv4Address("TCP", "10.0.0.1", 0), IPv6Address("TCP", "fd00::1", 0), IPv4Address("TCP", "10.0.0.1", 0)]
    )

    async def ask(fake: FakeReactor) -> list[str]:
        return list(await system_resolver(fake)(NAME))  # type: ignore[arg-type]

    assert result_of(ask(reactor)) == ["10.0.0.1", "fd00::1"]
    assert reactor.nameResolver.asked == [NAME]
    assert result_of(ask(FakeReactor([]))) == []
