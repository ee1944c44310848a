"""A client's view of its trackers and build-index nodes as Prometheus series (``ServicesCollector``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from results import result_of
from test_cluster_services import KEY, POLICY, Members, hosts, ranked, refused

from kraken import config as kconfig
from kraken.cluster.metrics import ServicesCollector
from kraken.cluster.services import ServiceHosts, ServiceHostsConfig


def test_members_down_downs_and_failovers_by_service() -> None:
    trackers, clock = hosts()
    config = kconfig.build(ServiceHostsConfig, kconfig.from_mapping({"hosts": ["http://b-a:15004"]}))
    indexes = ServiceHosts(config, clock=clock, policy=POLICY, kind="build-index")
    registry = CollectorRegistry()
    registry.register(ServicesCollector([trackers, indexes]))

    def sample(name: str, service: str) -> float | None:
        return registry.get_sample_value(name, {"service": service})

    assert sample("kraken_service_members", "tracker") == 3.0
    assert sample("kraken_service_members_down", "tracker") == 0.0

    calls = Members()
    calls.answers[ranked(KEY, list(trackers.members()))[0]] = refused()
    result_of(trackers.call("announce", KEY, calls), lambda: clock.advance(1.0))
    assert sample("kraken_service_members_down", "tracker") == 1.0
    assert sample("kraken_service_member_downs_total", "tracker") == 1.0
    assert sample("kraken_service_failovers_total", "tracker") == 1.0

    clock.advance(30.0)  # down_for has passed: tried first again
    assert sample("kraken_service_members_down", "tracker") == 0.0
    assert sample("kraken_service_member_downs_total", "tracker") == 1.0
    assert (
        sample("kraken_service_members", "build-index"),
        sample("kraken_service_failovers_total", "build-index"),
    ) == (
        1.0,
        0.0,
    )
