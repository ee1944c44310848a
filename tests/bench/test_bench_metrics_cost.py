"""bench/tracker_cpu.py's ``--metrics both``: the tracker's Site with its metrics and without, measured side by
side (a tiny run: that it runs and each side answers; the figures are the lead's)."""

from __future__ import annotations

import tracker_cpu


def test_both_settings_are_measured_in_one_run() -> None:
    rounds = tracker_cpu.measure(False, 2, 20, (True, False))
    assert set(rounds) == {True, False}
    assert all(len(r) == 2 and all(x > 0 for x in r) for r in rounds.values())


def test_only_the_metrics_site_serves_metrics() -> None:
    for metrics, code in ((True, b"200 OK"), (False, b"404 Not Found")):
        feed, take = tracker_cpu.connect(False, metrics)
        feed(b"GET /metrics HTTP/1.1\r\nHost: tracker\r\n\r\n")
        assert take().startswith(b"HTTP/1.1 " + code)
