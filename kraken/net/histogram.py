"""Histograms kept in plain lists, read by a collector at scrape time.

prometheus_client's ``Histogram`` takes a lock and walks its buckets on every observation; ours costs a
``bisect`` and two additions, so hot paths (an announce, an HTTP request) can afford one. A ``Histogram``
holds one series; ``HistogramCollector`` turns a mapping of label values to ``Histogram`` into a
``HistogramMetricFamily`` when Prometheus scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

#: Seconds: from a fast HTTP answer to a long blob download.
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class Histogram:
    """Observations counted in buckets with the upper bounds ``bounds`` (ascending, ``+Inf`` implied)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram bounds must be ascending and distinct: {bounds!r}")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last, as the text format wants them."""
        found, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            found.append(("+Inf" if bound == float("inf") else _le(bound), float(total)))
        return found


def _le(bound: float) -> str:
    return str(int(bound)) + ".0" if bound == int(bound) else repr(bound)


class HistogramCollector(Collector):
    """The family ``name`` (a histogram): one series per entry of ``read()``, keyed by its label values."""

    def __init__(
        self, name: str, doc: str, read: Callable[[], Mapping[tuple[str, ...], Histogram]], labels: Sequence[str] = ()
    ) -> None:
        self._name = name
        self._doc = doc
        self._read = read
        self._labels = tuple(labels)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._doc, labels=self._labels)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labels)
        for values, h in sorted(self._read().items()):
            family.add_metric(list(values), h.buckets(), h.sum)
        yield family


class Histograms:
    """Histograms with the same bounds, one per label value tuple, made on first use. The label values must
    come from a bounded set (route templates, size classes)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        self.by_labels: dict[tuple[str, ...], Histogram] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        h = self.by_labels.get(labels)
        if h is None:
            h = self.by_labels[labels] = Histogram(self._bounds)
        h.observe(value)
