"""A client's view of the replicated services it calls (trackers, build-index nodes) as Prometheus series.

``ServicesCollector`` reads each ``kraken.cluster.services.ServiceHosts`` when Prometheus scrapes: how many
members the list names now (the DNS name's answer, or the static list), how many of them are down (failed
within ``down_for``: calls try them last), how many times a member went down, and how many calls went on to
the next member. Labels are the service's kind (``tracker``, ``build-index``): a bounded set.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kraken.cluster.services import ServiceHosts

LABELS = ("service",)


class ServicesCollector(Collector):
    """``kraken_service_members``, ``kraken_service_members_down``, ``kraken_service_member_downs_total`` and
    ``kraken_service_failovers_total`` of ``hosts``."""

    def __init__(self, hosts: Sequence[ServiceHosts]) -> None:
        self._hosts = tuple(hosts)

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        members, down, downs, failovers = self._families()
        for h in self._hosts:
            names = h.members()
            members.add_metric([h.kind], len(names))
            down.add_metric([h.kind], sum(h.health.is_down(m) for m in names))
            downs.add_metric([h.kind], h.health.downs)
            failovers.add_metric([h.kind], h.failovers)
        yield from (members, down, downs, failovers)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily("kraken_service_members", "Members of a service this client calls, now.", labels=LABELS),
            GaugeMetricFamily(
                "kraken_service_members_down", "Members that failed lately (tried after the others).", labels=LABELS
            ),
            CounterMetricFamily("kraken_service_member_downs", "Times a member was marked down.", labels=LABELS),
            CounterMetricFamily("kraken_service_failovers", "Calls that went on to the next member.", labels=LABELS),
        )
