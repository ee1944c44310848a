"""Histograms kept in lists and read at scrape time (kraken.net.histogram)."""

from __future__ import annotations

import pytest
from metrics_samples import parse, value
from prometheus_client import generate_latest

from kraken.net.histogram import HistogramCollector, Histograms
from kraken.net.metrics import new_registry


def test_observations_land_in_cumulative_buckets_with_sum_and_count() -> None:
    sizes = Histograms((1, 5, 10))
    for n in (0, 1, 3, 5, 7, 50):
        sizes.observe(("a",), n)
    sizes.observe(("b",), 2.5)
    registry = new_registry()
    registry.register(HistogramCollector("kraken_test_size", "Sizes.", lambda: sizes.by_labels, ("kind",)))
    samples = parse(generate_latest(registry))
    buckets = {le: value(samples, "kraken_test_size_bucket", kind="a", le=le) for le in ("1.0", "5.0", "10.0", "+Inf")}
    assert buckets == {"1.0": 2.0, "5.0": 4.0, "10.0": 5.0, "+Inf": 6.0}  # a bound includes its value (le)
    assert value(samples, "kraken_test_size_count", kind="a") == 6.0
    assert value(samples, "kraken_test_size_sum", kind="a") == 66.0
    assert value(samples, "kraken_test_size_count", kind="b") == 1.0


def test_bounds_must_ascend() -> None:
    with pytest.raises(ValueError, match="ascending"):
        Histograms((5, 1)).observe((), 1)
