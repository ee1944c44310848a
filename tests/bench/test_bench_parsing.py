"""The harness's parsers and command-line checks: baselines (aria2c, opentracker, curl), the relay's token bucket
and netbench's options."""

from __future__ import annotations

import os
import subprocess
import time

import baselines
import netbench
import pytest
from _relay import Bucket


def test_parse_info_hash():
    text = "Files:\nInfo Hash: 17eefeaab271cfec62d14ed4e11d1098ad68e7d1\nPiece Length: 1.0MiB\n"
    assert baselines.parse_info_hash(text) == "17eefeaab271cfec62d14ed4e11d1098ad68e7d1"
    with pytest.raises(ValueError, match="Info Hash"):
        baselines.parse_info_hash("Piece Length: 1.0MiB\n")


def test_opentracker_whitelist_is_relative_to_its_chroot():
    assert baselines.opentracker_config("/w/bt") == "tracker.rootdir /w/bt\naccess.whitelist /whitelist.txt\n"


def test_parse_done_keeps_each_hosts_first_completion():
    done = baselines.parse_done(["1700000001.5 leecher-0", "1700000003.25 leecher-1", "1700000009 leecher-0"])
    assert done == {"leecher-0": 1700000001.5, "leecher-1": 1700000003.25}
    with pytest.raises(ValueError, match="not a completion line"):
        baselines.parse_done(["garbage"])


def test_parse_uploaded_takes_the_last_announce():
    log = (
        "GET /announce?info_hash=x&uploaded=0&downloaded=0&left=0&event=started HTTP/1.1\n"
        "GET /announce?info_hash=x&uploaded=12345&downloaded=0&left=0&event=stopped HTTP/1.1\n"
    )
    assert baselines.parse_uploaded(log) == 12345
    assert baselines.parse_uploaded("no announces") is None


def test_parse_curl():
    assert baselines.parse_curl("2.503117 8388608") == (2.503117, 8388608)
    with pytest.raises(ValueError, match="timing line"):
        baselines.parse_curl("")


def test_read_lines_from_a_fifo(tmp_path):
    fifo = str(tmp_path / "done.fifo")
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        with open(fifo, "w") as w:  # two writers, as two hooks would be
            w.write("1.0 a\n2.0 ")
        with open(fifo, "w") as w:
            w.write("b\n")
        assert baselines.read_lines(fd, 2, time.monotonic() + 30, []) == ["1.0 a", "2.0 b"]
        with pytest.raises(baselines.Unfinished, match="only 0 of 1 hosts finished") as late:
            baselines.read_lines(fd, 1, time.monotonic() - 1, [])
        assert (late.value.finished, late.value.count) == (0, 1)
        failed = subprocess.Popen(["false"])
        failed.wait()
        with pytest.raises(RuntimeError, match="1 clients failed"):
            baselines.read_lines(fd, 1, time.monotonic() + 30, [failed])
    finally:
        os.close(fd)


def test_bucket_makes_an_overdraft_wait():
    now = [0.0]
    b = Bucket(1000.0, clock=lambda: now[0])  # 1000 B/s, 50 B of burst
    assert b.spend(50) == 0.0
    assert b.spend(100) == pytest.approx(0.1)  # 100 B in debt: 0.1 s
    now[0] = 0.1
    assert b.spend(0) == 0.0
    now[0] = 10.0
    assert b.spend(50) == 0.0  # refills to the burst only, not beyond
    assert b.spend(1) == pytest.approx(0.001)


def test_netbench_options():
    p = netbench.parser()
    args = p.parse_args([])
    assert (args.mode, args.agents, args.systems) == ("netns", [10, 25, 50], ["ours", "aria2", "registry"])
    assert args.rate == 20_000_000
    args = p.parse_args(["--agents", "50,10,10", "--systems", "registry,ours", "--mode", "loopback"])
    assert args.agents == [10, 50] and args.systems == ["ours", "registry"]
    for bad in (["--agents", "0"], ["--agents", "252"], ["--agents", "x"], ["--systems", "docker"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_registry_counts_must_be_among_the_agent_counts(capsys):
    with pytest.raises(SystemExit):
        netbench.main(["--agents", "10", "--registry-agents", "25"])
    assert "--registry-agents must be a subset of --agents" in capsys.readouterr().err


def test_places_on_loopback_and_on_a_host_of_their_own():
    from _swarm import Place

    loop = Place()
    assert not loop.own_host
    assert len({loop.port(15002) for _ in range(3)}) == 3  # free ports, each handed out once
    assert loop.listen(4000) == "tcp:4000:interface=127.0.0.1"
    host = Place("10.99.0.3", ("ip", "netns", "exec", "kb-h3"))
    assert host.own_host and host.port(16002) == 16002
    assert host.listen(16002) == "tcp:16002"  # every interface of the namespace, its loopback included
    assert host.local_url(16002) == "http://127.0.0.1:16002"


def test_from_json_makes_the_table_and_plots_of_a_saved_run(tmp_path, capsys):
    from report import Report, Run

    saved = Report("netns", "python bench/netbench.py --agents 2", "vm", "2026-11-28")
    saved.runs.append(Run("ours", 2, 1 << 20, 8_000_000, [1.2, 1.4], 1.5, 0.5, 0.2, 1.4))
    js = tmp_path / "saved.json"
    js.write_text(saved.to_json())
    out = tmp_path / "RESULTS.md"
    assert netbench.main(["--from-json", str(js), "--plots", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "`python bench/netbench.py --agents 2`" in text and "| Kraken (ours) | 2 |" in text
    assert (tmp_path / "netbench-netns-cdf.png").exists() and (tmp_path / "netbench-netns-slowest.png").exists()
    assert text.strip() in capsys.readouterr().out


def test_libtorrent_is_a_system():
    args = netbench.parser().parse_args(["--systems", "libtorrent,aria2"])
    assert args.systems == ["aria2", "libtorrent"]
    assert set(netbench.BITTORRENT) == {"aria2", "libtorrent"}


def test_parse_lt_uploaded_takes_the_last_count():
    assert baselines.parse_lt_uploaded("announced: 1 peers\npayload uploaded 12\npayload uploaded 345\n") == 345
    assert baselines.parse_lt_uploaded("announced: 1 peers\n") is None


def test_libtorrent_peers_listen_on_their_hosts_address_with_the_swarms_room():
    torrent = baselines.Torrent.__new__(baselines.Torrent)
    torrent.path, torrent.blob = "/w/bt/blob.torrent", "/w/seed/blob"
    lt = baselines.LIBTORRENT
    own = lt.limits(None, 50, False)
    assert own == ["--peers=50"]  # on namespaces the links are the only caps
    seeder = lt.seeder(torrent, "10.99.0.1", 6881, own)
    assert seeder[:4] == [baselines.LT_PYTHON, baselines.LT_PEER, "--seed", "--super-seed"]
    assert "--save=/w/seed" in seeder and "--listen=10.99.0.1:6881" in seeder
    loop = lt.limits(1_000_000, 3, True)
    assert loop == ["--peers=3", "--rate=1000000", "--loopback"]
    leecher = lt.leecher(torrent, "127.0.0.1", 12345, loop, "leecher-0", "/w/bt-x/leecher-0", "/w/done.fifo")
    assert "--seed" not in leecher and "--listen=127.0.0.1:12345" in leecher
    assert leecher[-2:] == ["--host=leecher-0", "--done=/w/done.fifo"]
    assert baselines.ARIA2.limits(None, 50, False) == ["--bt-max-peers=55"]


def test_the_piece_summary_reads_the_lines_an_agent_logs_with_piece_log(tmp_path):
    """The agent's ``p2p.piece_log`` line, as its log file has it, parsed by bench/pieces.py and summed up."""
    import hashlib
    from types import SimpleNamespace

    import pieces
    from twisted.internet.task import Clock
    from twisted.logger import capturedLogs, formatEvent

    from kraken.p2p.leech import Leech

    origin = hashlib.sha1(b"10.99.0.1:15001").hexdigest()
    http, p2p = "advertise: '10.99.0.1:15002'", "p2p: {listen: 'tcp:15001', advertise: '10.99.0.1:15001'}"
    (tmp_path / "origin.yaml").write_text(f"{http}\n{p2p}\n")  # its HTTP address first: not its peer ID
    (tmp_path / "agent-0.yaml").write_text("p2p: {listen: 'tcp:16001', advertise: '10.99.0.3:16001'}\n")
    clock = Clock()
    clock.advance(1765156710.25)
    torrent = SimpleNamespace(info=SimpleNamespace(digest="sha256:" + "ab" * 32))
    with capturedLogs() as events:
        Leech._log_piece(SimpleNamespace(_clock=clock), torrent, SimpleNamespace(peer_id=origin, origin=True), 7,
                         [1765156701.5, 1765156702.0, 1765156704.5])  # fmt: skip
    (tmp_path / "agent-0.log").write_text(f"2026-12-08T01:18:23+0000 [kraken.p2p#info] {formatEvent(events[0])}\n")
    [got] = pieces.read_work(str(tmp_path), "sha256:" + "ab" * 32)
    assert got == pieces.Delivery("agent-0", 7, "origin", 1765156701.5, 1765156702.0, 1765156704.5, 1765156710.25)
    assert pieces.read_work(str(tmp_path), "sha256:" + "cd" * 32) == []  # another blob's lines are not this one's


def test_the_piece_summary_measures_waits_transfers_hops_and_idle_links():
    import pieces

    d = pieces.Delivery
    deliveries = [d("agent-0", 0, "origin", 0, 1, 2, 2.1), d("agent-1", 0, "agent-0", 2.2, 2.5, 3, 3.1),
                  d("agent-0", 1, "origin", 0, 1.5, 3, 3.1)]  # fmt: skip
    assert pieces.hops(deliveries) == {("agent-0", 0): 1, ("agent-1", 0): 2, ("agent-0", 1): 1}
    assert pieces.union_length([(1, 2), (1.5, 3), (4, 5)]) == 3
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in pieces.summary(deliveries, 1 << 20,
            20_000_000) if line.startswith("| ") and "median" not in line}  # fmt: skip
    assert rows["a sender's uploads at once, while it sends"][0] == "1.12"  # origin 1.25 (2.5 s in 2 s), agent-0 1
    assert rows["a host's time with nothing arriving (s)"][2].startswith("1.10")  # agent-0: 3.1 s, 2 s arriving
    assert pieces.summary([], 1 << 20, 20_000_000)[0].startswith("(no piece_log lines")
