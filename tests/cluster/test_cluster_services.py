"""ServiceHosts: the members of a replicated service in rendezvous order, passive health, failover, DNS."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from cluster_fakes import FakeResolver
from results import outcome_of, result_of
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from kraken import config as kconfig
from kraken.agent.config import AgentConfig
from kraken.cluster.ring import score
from kraken.cluster.services import PassiveHealth, ServiceHosts, ServiceHostsConfig, describe, service_hosts
from kraken.net import HTTPStatusError, RetryPolicy
from kraken.proxy.config import ProxyConfig

A, B, C = "http://t-a:15003", "http://t-b:15003", "http://t-c:15003"
POLICY = RetryPolicy(attempts=3, backoff=1.0, factor=2.0, max_backoff=4.0)
KEY = b"some-blob"


def ranked(key: bytes, members: list[str]) -> list[str]:
    return sorted(members, key=lambda m: (-score(key, m), m))


class Members:
    """The calls: ``answers[member]`` is an exception to raise, or absent to answer with the member's name."""

    def __init__(self) -> None:
        self.answers: dict[str, Exception] = {}
        self.calls: list[str] = []

    async def __call__(self, member: str) -> str:
        self.calls.append(member)
        error = self.answers.get(member)
        if error is not None:
            raise error
        return member


def hosts(members: tuple[str, ...] = (A, B, C), down_for: str = "30s") -> tuple[ServiceHosts, Clock]:
    clock = Clock()
    config = kconfig.build(ServiceHostsConfig, kconfig.from_mapping({"hosts": list(members), "down_for": down_for}))
    return ServiceHosts(config, clock=clock, policy=POLICY, kind="tracker"), clock


def run(clock: Clock, work: Any) -> Any:
    return result_of(work, lambda: clock.advance(1.0))


def refused() -> Exception:
    return ConnectionRefusedError("refused")


def test_members_are_asked_in_rendezvous_order_per_key() -> None:
    service, clock = hosts()
    calls = Members()
    for key in (b"one", b"two", b"three", b"four"):
        assert run(clock, service.call("get", key, calls)) == ranked(key, [A, B, C])[0]
        assert run(clock, service.locations(key)) == ranked(key, [A, B, C])
    # Another client with the same members in another order agrees.
    other, _ = hosts((C, A, B))
    assert run(clock, other.locations(b"one")) == ranked(b"one", [A, B, C])


def test_a_member_that_fails_is_left_for_the_next_and_skipped_for_a_while() -> None:
    service, clock = hosts()
    first, second, third = ranked(KEY, [A, B, C])
    calls = Members()
    calls.answers[first] = refused()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert run(clock, service.call("announce", KEY, calls)) == second
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert calls.calls == [first, second]
    assert service.failovers == 1
    assert service.health.is_down(first)
    texts = [e["log_format"] for e in events if "log_format" in e]
    assert "{what} on {location} failed ({error}); trying the next location" in texts
    assert "{kind} {member} failed ({error}); trying it after the others for {down_for:.0f}s" in texts

    # While it is down the next call goes straight to the second member, and the first comes last.
    calls.calls.clear()
    assert run(clock, service.call("announce", KEY, calls)) == second
    assert calls.calls == [second]
    assert run(clock, service.locations(KEY)) == [second, third, first]

    # After down_for it is first again; it answers, and stays up.
    clock.advance(30.0)
    del calls.answers[first]
    calls.calls.clear()
    assert run(clock, service.call("announce", KEY, calls)) == first
    assert calls.calls == [first]
    assert not service.health.is_down(first)


def test_when_every_member_is_down_all_are_tried_anyway() -> None:
    service, clock = hosts((A, B))
    order = ranked(KEY, [A, B])
    calls = Members()
    calls.answers = {A: refused(), B: refused()}
    failure = outcome_of(service.call("announce", KEY, calls), lambda: clock.advance(1.0))
    assert isinstance(failure, Failure) and failure.check(ConnectionRefusedError)
    # Three rounds (the policy's attempts), each over both members in the same order.
    assert calls.calls == order * 3
    assert service.health.is_down(A) and service.health.is_down(B)
    # Both down: the next call still tries them, the first to come back answers.
    del calls.answers[order[1]]
    calls.calls.clear()
    assert run(clock, service.call("announce", KEY, calls)) == order[1]
    assert calls.calls == order


def test_a_member_that_comes_back_within_the_rounds_answers() -> None:
    service, clock = hosts((A,))
    calls = Members()
    calls.answers[A] = HTTPStatusError("GET", A, 503)
    result = Deferred.fromCoroutine(service.call("get", KEY, calls))
    assert calls.calls == [A]  # one member: the round failed, the next waits for the backoff
    del calls.answers[A]
    clock.advance(1.0)
    assert result.result == A  # type: ignore[attr-defined]
    assert calls.calls == [A, A]


def test_an_answer_below_500_ends_the_search() -> None:
    service, clock = hosts()
    first = ranked(KEY, [A, B, C])[0]
    calls = Members()
    calls.answers[first] = HTTPStatusError("PUT", first, 400)
    failure = outcome_of(service.call("put", KEY, calls), lambda: clock.advance(1.0))
    assert isinstance(failure, Failure) and failure.check(HTTPStatusError)
    assert calls.calls == [first]
    assert not service.health.is_down(first)


def test_passive_health_order() -> None:
    clock = Clock()
    health = PassiveHealth(clock, 10.0, "tracker")
    health.failed(B, refused())
    assert health.order([A, B, C]) == [A, C, B]
    clock.advance(9.0)
    assert health.is_down(B)
    clock.advance(1.0)
    assert health.order([A, B, C]) == [A, B, C]
    health.failed(A, refused())
    health.passed(A)
    assert not health.is_down(A)
    assert health.downs == 2


def test_dns_members_are_its_addresses_on_the_port() -> None:
    clock = Clock()
    resolver = FakeResolver({"trackers.test": ["10.0.0.2", "10.0.0.1"]})
    config = ServiceHostsConfig(dns="trackers.test:15003", scheme="https")
    service = ServiceHosts(config, clock=clock, policy=POLICY, kind="tracker", resolve=resolver)
    assert service.members() == ()
    asked = Deferred.fromCoroutine(service.locations(KEY))
    parent = MultiService()
    service.attach(parent)
    parent.startService()
    try:
        members = ["https://10.0.0.1:15003", "https://10.0.0.2:15003"]
        assert sorted(asked.result) == members  # type: ignore[attr-defined]
        assert service.members() == tuple(members)
    finally:
        parent.stopService()
    assert describe(config) == "https://trackers.test:15003 (DNS)"


def test_a_dns_name_without_addresses_is_a_network_error_after_the_timeout() -> None:
    clock = Clock()
    config = ServiceHostsConfig(dns="trackers.test:15003")
    service = ServiceHosts(config, clock=clock, policy=POLICY, kind="tracker", resolve=FakeResolver(), timeout=5.0)
    failure = outcome_of(service.locations(KEY), lambda: clock.advance(1.0))
    assert isinstance(failure, Failure) and failure.check(DNSLookupError)
    assert "trackers.test:15003 has no address yet" in str(failure.value)


def test_the_three_forms_of_the_key() -> None:
    one = kconfig.build(AgentConfig, kconfig.from_mapping({"tracker": A + "/"}))
    assert service_hosts(one.tracker).urls == (A,)
    many = kconfig.build(AgentConfig, kconfig.from_mapping({"tracker": [A, B], "build_index": [B, C]}))
    assert service_hosts(many.tracker).urls == (A, B)
    assert service_hosts(many.build_index).urls == (B, C)
    mapped = kconfig.build(
        ProxyConfig, kconfig.from_mapping({"build_index": {"dns": "bi.test:15004", "down_for": "5s"}})
    )
    found = service_hosts(mapped.build_index)
    assert (found.dns, found.scheme, found.down_for) == ("bi.test:15004", "http", 5.0)
    assert describe(many.tracker) == f"{A}, {B}"
    # Today's default and today's configs are unchanged.
    assert AgentConfig().tracker == "http://127.0.0.1:15003"
    assert ProxyConfig().build_index == "http://127.0.0.1:15004"


@pytest.mark.parametrize(
    ("cls", "data", "key", "message"),
    [
        (AgentConfig, {"tracker": "tracker:15003"}, "", "tracker: 'tracker:15003' is not a base URL"),
        (AgentConfig, {"tracker": [A, "ftp://x:1"]}, "", "tracker: 'ftp://x:1' is not a base URL"),
        (AgentConfig, {"tracker": []}, "", "tracker: hosts must not be empty"),
        (AgentConfig, {"build_index": [A, A + "/"]}, "", "build_index: hosts lists a member twice"),
        (AgentConfig, {"tracker": {"dns": "x:1", "hosts": [A]}}, "tracker", "give exactly one of hosts"),
        (ProxyConfig, {"build_index": {"dns": "no-port"}}, "build_index", "must be 'host:port'"),
        (ProxyConfig, {"build_index": {"dns": "x:1", "down_for": "0s"}}, "build_index", "down_for"),
        (ProxyConfig, {"build_index": {"dns": "x:1", "color": 1}}, "build_index", "unknown key"),
    ],
)
def test_bad_keys_are_config_errors_naming_file_and_key(
    tmp_path: Any, cls: Any, data: dict[str, Any], key: str, message: str
) -> None:
    path = tmp_path / "daemon.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(kconfig.ConfigError) as e:
        kconfig.build(cls, kconfig.load(str(path)))
    text = str(e.value)
    assert str(path) in text
    assert message in text
    if key:
        assert key in text
