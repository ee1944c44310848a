"""The testbed's namespaces: the commands that build and remove them, and that they are always removed."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys

import netns
import pytest

BENCH = os.path.dirname(os.path.abspath(netns.__file__))


class FakeIp:
    """Records commands and keeps the set of namespaces they would have created, for ``lister``."""

    def __init__(self, fail_on: str | None = None, existing: tuple[str, ...] = ()) -> None:
        self.commands: list[list[str]] = []
        self.namespaces: list[str] = list(existing)
        self.fail_on = fail_on

    def run(self, argv, check):
        self.commands.append(list(argv))
        joined = " ".join(argv)
        if self.fail_on and self.fail_on in joined:
            if check:
                raise RuntimeError(f"{joined}: failed")
            return
        if argv[:3] == ["ip", "netns", "add"]:
            self.namespaces.append(argv[3])
        elif argv[:3] == ["ip", "netns", "del"] and argv[3] in self.namespaces:
            self.namespaces.remove(argv[3])

    def list(self) -> str:
        return "".join(f"{n} (id: {i})\n" for i, n in enumerate(self.namespaces))


def bed(fake: FakeIp, hosts: int = 2, neighbours: str | None = None) -> netns.Testbed:
    return netns.Testbed(
        hosts, 20_000_000, prefix="t", subnet="10.98.7", runner=fake.run, lister=fake.list, neighbours=neighbours
    )


def test_setup_commands_cap_every_host_both_ways_with_tbf():
    cmds = bed(FakeIp(), hosts=2).setup_commands()
    assert cmds[:3] == [
        ["ip", "link", "add", "tbr", "type", "bridge"],
        ["ip", "addr", "add", "10.98.7.254/24", "dev", "tbr"],
        ["ip", "link", "set", "tbr", "up"],
    ]
    cap = ["tbf", "rate", "20000000bit", "burst", "262144", "latency", "50ms"]
    assert ["tc", "-n", "t-h2", "qdisc", "add", "dev", "eth0", "root", *cap] in cmds  # upload
    assert ["tc", "qdisc", "add", "dev", "tv2", "root", *cap] in cmds  # download, on the bridge side
    assert ["ip", "-n", "t-h1", "addr", "add", "10.98.7.1/24", "dev", "eth0"] in cmds
    assert ["ip", "link", "add", "tv1", "type", "veth", "peer", "name", "eth0", "netns", "t-h1"] in cmds
    assert len(cmds) == 3 + 2 * 8
    text = " ".join(" ".join(c) for c in cmds)
    assert "netem" not in text and "matchall" not in text  # neither exists on these kernels


def test_sysctls_are_set_in_every_host():
    fake = FakeIp()
    b = netns.Testbed(2, 1000, prefix="t", sysctls=("net.ipv4.tcp_notsent_lowat=131072",), runner=fake.run)
    cmds = b.setup_commands()
    for ns in ("t-h1", "t-h2"):
        assert ["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.tcp_notsent_lowat=131072"] in cmds
    with pytest.raises(ValueError, match="key=value"):
        netns.Testbed(2, 1000, sysctls=("net.ipv4.x",))


def test_tbf_burst_grows_with_the_rate():
    assert netns.tbf(1_000_000_000)[4] == str(1_000_000_000 // 8 // 100)
    assert netns.tbf(8_000_000)[4] == str(256 * 1024)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hosts": 0}, "hosts must be 1..253"),
        ({"hosts": 254}, "hosts must be 1..253"),
        ({"rate_bits": 0}, "rate must be positive"),
        ({"prefix": "too-long!"}, "prefix must be"),
    ],
)
def test_bad_testbeds_are_refused(kwargs, message):
    args = {"hosts": 2, "rate_bits": 1000, **kwargs}
    with pytest.raises(ValueError, match=message):
        netns.Testbed(**args)


def test_host_addresses_and_exec():
    b = bed(FakeIp(), hosts=3)
    h = b.host(3)
    assert (h.namespace, h.ip) == ("t-h3", "10.98.7.3")
    assert h.exec(["curl", "x"]) == ["ip", "netns", "exec", "t-h3", "curl", "x"]
    with pytest.raises(IndexError):
        b.host(4)


def test_parse_netns_list():
    assert netns.parse_netns_list("kb-h2 (id: 1)\nkb-h1\n\nother (id: 0)\n") == ["kb-h2", "kb-h1", "other"]


def test_up_builds_then_removes_everything():
    fake = FakeIp(existing=("unrelated",))
    with bed(fake).up():
        assert sorted(fake.namespaces) == ["t-h1", "t-h2", "unrelated"]
    assert fake.namespaces == ["unrelated"]
    assert fake.commands[-1] == ["ip", "link", "del", "tbr"]


def test_up_removes_what_a_killed_run_left_first():
    fake = FakeIp(existing=("t-h1", "t-h7"))
    with bed(fake).up():
        assert sorted(fake.namespaces) == ["t-h1", "t-h2"]
    assert ["ip", "netns", "del", "t-h7"] in fake.commands
    assert fake.namespaces == []


def test_up_removes_the_hosts_on_an_exception():
    fake = FakeIp()
    with pytest.raises(ZeroDivisionError), bed(fake).up():
        1 / 0  # noqa: B018
    assert fake.namespaces == []


def test_up_removes_the_hosts_when_setup_fails_half_way():
    fake = FakeIp(fail_on="tc -n t-h2")
    with pytest.raises(RuntimeError, match="failed"), bed(fake).up():
        pytest.fail("the body must not run")
    assert fake.namespaces == []


def test_sigterm_inside_up_exits_through_the_teardown_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    fake = FakeIp()
    with pytest.raises(SystemExit) as exc, bed(fake).up():
        os.kill(os.getpid(), signal.SIGTERM)
    assert exc.value.code == 128 + signal.SIGTERM
    assert fake.namespaces == []
    assert signal.getsignal(signal.SIGTERM) is before


CHILD = """
import signal, sys
# Ctrl-C as at a terminal, even when the suite runs in the background (a shell's & starts it with SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {bench!r})
import netns
bed = netns.Testbed(2, 20_000_000, prefix={prefix!r}, subnet="10.98.7")
with bed.up():
    print("up", flush=True)
    signal.pause()
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_real_namespaces_are_capped_and_removed_when_the_run_is_interrupted(sig):
    prefix = "t" + secrets.token_hex(2)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(bench=BENCH, prefix=prefix)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "up\n", child.stderr.read()
        names = netns.parse_netns_list(netns.list_namespaces())
        assert {f"{prefix}-h1", f"{prefix}-h2"} <= set(names)
        qdisc = subprocess.run(["tc", "-n", f"{prefix}-h2", "qdisc", "show", "dev", "eth0"], capture_output=True,
                               text=True, check=True).stdout  # fmt: skip
        assert "tbf" in qdisc and "20Mbit" in qdisc
        child.send_signal(sig)
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        netns.Testbed(2, 1, prefix=prefix).teardown()  # only if the test failed
    assert child.returncode != 0
    assert not [n for n in netns.parse_netns_list(netns.list_namespaces()) if n.startswith(prefix)]
    link = subprocess.run(["ip", "link", "show", f"{prefix}br"], capture_output=True, text=True)
    assert link.returncode != 0


def test_neighbour_limits_make_room_for_every_pair():
    assert netns.neighbour_limits(52, {"gc_thresh2": 512, "gc_thresh3": 1024}) == {
        "gc_thresh2": 2704,
        "gc_thresh3": 5408,
    }
    assert netns.neighbour_limits(12, {"gc_thresh2": 512, "gc_thresh3": 1024}) == {}  # already room
    assert netns.neighbour_limits(30, {"gc_thresh2": 512, "gc_thresh3": 4096}) == {"gc_thresh2": 900}


def test_neighbour_room_puts_the_limits_back(tmp_path):
    (tmp_path / "gc_thresh2").write_text("512\n")
    (tmp_path / "gc_thresh3").write_text("1024\n")
    with netns.neighbour_room(52, str(tmp_path)):
        assert (tmp_path / "gc_thresh2").read_text() == "2704"
        assert (tmp_path / "gc_thresh3").read_text() == "5408"
    assert (tmp_path / "gc_thresh2").read_text() == "512"
    assert (tmp_path / "gc_thresh3").read_text() == "1024"
    with bed(FakeIp(), hosts=52, neighbours=str(tmp_path)).up():  # the testbed makes room while it is up
        assert (tmp_path / "gc_thresh3").read_text() == "5408"
    assert (tmp_path / "gc_thresh2").read_text() == "512"
    assert (tmp_path / "gc_thresh3").read_text() == "1024"
