"""The benchmark's result records, Markdown table, JSON dump and plots."""

from __future__ import annotations

import pytest
from report import Report, Run, Skipped, cdf_points, largest_runs, markdown, plot, slowest_series, table

MIB = 1 << 20


def run(system: str, n: int, times: list[float], **kw) -> Run:
    # 8 MiB at 8 Mbit/s: an ideal of 8.388608 s; times below are in multiples of it.
    ideal = 8 * MIB * 8 / 8_000_000
    return Run(system, n, 8 * MIB, 8_000_000, [t * ideal for t in times], **kw)


def sample() -> Report:
    r = Report("netns", "python bench/netbench.py --agents 2,3", "vm (2 CPUs)", "2026-11-28")
    r.runs += [
        run("registry", 2, [1.9, 2.0], egress_copies=2.0, cpu_seconds=0.5, busy=0.1),
        run("ours", 3, [1.1, 1.2, 1.5], egress_copies=1.25, cpu_seconds=3.0, busy=0.42),
        run("ours", 2, [1.0, 1.1], egress_copies=1.0, cpu_seconds=2.0, busy=0.3),
        run("aria2", 3, [1.4, 1.5, 1.6], egress_copies=None, cpu_seconds=None, busy=None),
    ]
    r.skipped.append(Skipped("registry", 3, "only N = 2 were run"))
    r.skipped.append(Skipped("aria2", 4, "stopped: 1 of 4 leechers had not finished after 42 s", at_least=5.0))
    return r


def test_ratios_are_over_the_ideal():
    r = run("ours", 3, [1.1, 1.2, 1.5])
    assert r.ideal == pytest.approx(8.388608)
    assert r.median_ratio == pytest.approx(1.2)
    assert r.slowest_ratio == pytest.approx(1.5)


def test_a_run_needs_a_known_system_and_one_time_per_host():
    with pytest.raises(ValueError, match="unknown system"):
        Run("docker", 1, 1, 1, [1.0])
    with pytest.raises(ValueError, match="2 completion times"):
        Run("ours", 3, 1, 1, [1.0, 2.0])


def test_table_rows_are_ordered_and_every_row_has_every_column():
    lines = table(sample())
    columns = lines[0].count("|")
    assert all(line.count("|") == columns for line in lines), lines
    body = lines[2:]
    assert [line.split("|")[1].strip() for line in body] == [
        "Kraken (ours)",
        "Kraken (ours)",
        "BitTorrent (aria2c)",
        "BitTorrent (aria2c)",
        "central registry",
        "central registry",
    ]
    assert body[0].startswith(
        "| Kraken (ours) | 2 | 8 MiB | 8 Mbit/s | 8.4 s | 1.05x | 1.10x (9.2 s) | 1.00 | 2.0 | 30 % |"
    )
    assert "| 1.50x (12.6 s) | 1.25 | 3.0 | 42 % |" in body[1]
    assert body[2].endswith("| n/a | n/a | n/a |")  # unknown figures are said to be unknown, not invented
    assert "not run: only N = 2 were run" in body[5]
    # A stopped run is not a measurement: only its bound is said, in words.
    assert "| 4 | did not finish (slowest > 5.00x): stopped: 1 of 4 leechers had not finished after 42 s |" in body[3]
    assert "eth0 bytes sent" in lines[0]


def test_the_stream_window_variant_has_its_own_rows_after_ours():
    r = sample()
    r.runs.append(run("ours-window", 3, [1.0, 1.3, 1.4], egress_copies=1.5, cpu_seconds=3.5, busy=0.5))
    labels = [line.split("|")[1].strip() for line in table(r)[2:]]
    assert labels[:3] == ["Kraken (ours)", "Kraken (ours)", "Kraken, p2p.stream_window"]
    assert largest_runs(r.runs)["ours-window"].n == 3


def test_netbench_takes_the_window_variant_and_the_streaming_reader():
    import netbench

    args = netbench.parser().parse_args(["--systems", "ours-window,ours", "--reader", "stream", "--stream-window", "4"])
    assert (args.systems, args.reader, args.stream_window) == (["ours", "ours-window"], "stream", 4)
    assert netbench.parser().parse_args([]).systems == ["ours", "aria2", "registry"]


def test_markdown_names_the_command_the_mode_and_the_plots():
    text = markdown(sample(), ["a.png"])
    assert "`python bench/netbench.py --agents 2,3`" in text
    assert "namespaces, tbf caps" in text and "![a.png](a.png)" in text
    loop = Report("loopback", "c", "m", "d")
    assert "LOOPBACK" in markdown(loop)
    assert "payload counters" in table(loop)[0]


def test_json_round_trip():
    r = sample()
    back = Report.from_json(r.to_json())
    assert back == r


def test_plot_series():
    r = sample()
    assert {s: x.n for s, x in largest_runs(r.runs).items()} == {"ours": 3, "aria2": 3, "registry": 2}
    xs, ys = cdf_points([3.0, 1.0, 2.0], ideal=2.0)
    assert xs == [0.5, 1.0, 1.5] and ys == pytest.approx([1 / 3, 2 / 3, 1.0])
    series = slowest_series(r.runs)
    assert series["ours"] == ([2, 3], [pytest.approx(1.1), pytest.approx(1.5)])


def test_plot_writes_two_pngs(tmp_path):
    cdf, slowest = tmp_path / "cdf.png", tmp_path / "slowest.png"
    plot(sample(), str(cdf), str(slowest))
    for path in (cdf, slowest):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
