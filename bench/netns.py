"""A bandwidth-capped multi-host testbed: one network namespace per host on one bridge.

Host ``I`` (1-based) is the namespace ``<prefix>-hI`` with ``10.99.0.I/24`` on its ``eth0``; its veth peer
``<prefix>vI`` sits on the bridge ``<prefix>br`` (``10.99.0.254`` in the root namespace). Every host is capped
both ways with tbf at the same rate: the upload on ``eth0`` inside the namespace, the download on the veth peer
in the root namespace (the kernels here have no netem and no matchall classifier, so no ifb redirect is needed
either). See ../shared/reference/testbed.md §12.

``Testbed.up()`` is a context manager that builds the hosts and always removes them again: on a normal exit, on
an exception, on Ctrl-C, and on SIGTERM or SIGHUP (turned into ``SystemExit`` while the testbed is up).
Namespaces left by a run that was killed with SIGKILL are removed by the next ``up()`` with the same prefix, or
by ``python bench/netbench.py --cleanup``.

All the namespaces share the machine's one ARP (neighbour) table, 1,024 entries at most by default, where real
hosts have a table each: ``up()`` raises its limits for as long as the hosts are up (``neighbour_room``), so that
every host may talk to every other. A run killed with SIGKILL leaves them raised (harmless: the kernel only keeps
more entries before it collects them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_HOSTS = 253  # a /24 with .254 taken by the bridge
SUBNET = "10.99.0"

Runner = Callable[[Sequence[str], bool], None]


def run_command(argv: Sequence[str], check: bool) -> None:
    """Run one command; with ``check`` a failure raises with the command and its stderr."""
    done = subprocess.run(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")


def tbf(rate_bits: int) -> list[str]:
    """tbf arguments for a cap of ``rate_bits`` bit/s: a burst of at least 256 kB (and of 10 ms at the rate)."""
    burst = max(256 * 1024, rate_bits // 8 // 100)
    return ["tbf", "rate", f"{rate_bits}bit", "burst", str(burst), "latency", "50ms"]


def list_namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def parse_netns_list(text: str) -> list[str]:
    """Names from ``ip netns list`` (lines such as ``kb-h3 (id: 2)`` or ``kb-h3``)."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


#: The kernel's IPv4 neighbour (ARP) table limits: one table for the whole machine, every namespace's entries in it.
NEIGH = "/proc/sys/net/ipv4/neigh/default"


def neighbour_limits(count: int, now: dict[str, int]) -> dict[str, int]:
    """The ARP table limits (``gc_thresh2``, the soft one, and ``gc_thresh3``, the hard one) that leave room for
    ``count`` hosts that each talk to every other, and the bridge to each; the ones ``now`` already above are
    left alone."""
    need = count * count
    wanted = {"gc_thresh2": need, "gc_thresh3": 2 * need}
    return {k: v for k, v in wanted.items() if v > now.get(k, 0)}


@contextlib.contextmanager
def neighbour_room(count: int, where: str = NEIGH) -> Iterator[None]:
    """Room in the ARP table for ``count`` hosts that all talk to each other, the previous limits put back at
    the end. Real hosts have a table each; here every namespace's entries share the machine's, 1,024 at most
    by default (``gc_thresh3``): a BitTorrent swarm of 50, where each peer connects to every other, needs
    about 2,600, and once the table is full a host cannot resolve a peer it has not talked to yet, so its SYNs
    never leave ("neighbour: arp_cache: neighbor table overflow!" in the kernel log; aria2c's leechers that
    started last stayed at 0 % with every connection in SYN-SENT)."""
    now = {}
    for key in ("gc_thresh2", "gc_thresh3"):
        with open(os.path.join(where, key)) as f:
            now[key] = int(f.read())
    raised = neighbour_limits(count, now)
    try:
        for key, value in raised.items():
            with open(os.path.join(where, key), "w") as f:
                f.write(str(value))
        yield
    finally:
        for key in raised:
            with open(os.path.join(where, key), "w") as f:
                f.write(str(now[key]))


@dataclass(frozen=True)
class Host:
    index: int
    namespace: str
    ip: str

    def exec(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace (``ip netns exec`` execs, so the PID is the command's)."""
        return ["ip", "netns", "exec", self.namespace, *argv]


@dataclass
class Testbed:
    hosts: int
    rate_bits: int
    prefix: str = "kb"
    subnet: str = SUBNET  # the first three octets of the /24
    sysctls: tuple[str, ...] = ()  # "key=value" set in every host (per-namespace keys such as net.ipv4.*)
    runner: Runner = run_command
    lister: Callable[[], str] = field(default=lambda: list_namespaces())
    neighbours: str | None = NEIGH  # the ARP table settings raised for the run (``neighbour_room``); None: untouched

    def __post_init__(self) -> None:
        if not 1 <= self.hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be 1..{MAX_HOSTS} (one /24), not {self.hosts}")
        if self.rate_bits <= 0:
            raise ValueError(f"rate must be positive, not {self.rate_bits}")
        bad = [kv for kv in self.sysctls if "=" not in kv or " " in kv]
        if bad:
            raise ValueError(f"sysctls are key=value: {bad[0]!r}")
        if not self.prefix.isalnum() or len(self.prefix) > 6:
            raise ValueError(f"prefix must be 1-6 letters or digits (interface names are short): {self.prefix!r}")

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    def host(self, index: int) -> Host:
        if not 1 <= index <= self.hosts:
            raise IndexError(f"host {index} is not in 1..{self.hosts}")
        return Host(index, f"{self.prefix}-h{index}", f"{self.subnet}.{index}")

    def setup_commands(self) -> list[list[str]]:
        cap = tbf(self.rate_bits)
        cmds = [
            ["ip", "link", "add", self.bridge, "type", "bridge"],
            ["ip", "addr", "add", f"{self.subnet}.254/24", "dev", self.bridge],
            ["ip", "link", "set", self.bridge, "up"],
        ]
        for i in range(1, self.hosts + 1):
            h, veth = self.host(i), f"{self.prefix}v{i}"
            cmds += [
                ["ip", "netns", "add", h.namespace],
                ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", h.namespace],
                ["ip", "link", "set", veth, "master", self.bridge, "up"],
                ["ip", "-n", h.namespace, "addr", "add", f"{h.ip}/24", "dev", "eth0"],
                ["ip", "-n", h.namespace, "link", "set", "lo", "up"],
                ["ip", "-n", h.namespace, "link", "set", "eth0", "up"],
                ["tc", "-n", h.namespace, "qdisc", "add", "dev", "eth0", "root", *cap],  # upload cap
                ["tc", "qdisc", "add", "dev", veth, "root", *cap],  # download cap
                *(h.exec(["sysctl", "-q", "-w", kv]) for kv in self.sysctls),
            ]
        return cmds

    def teardown_commands(self, namespaces: Sequence[str] | None = None) -> list[list[str]]:
        """Delete our namespaces, then the root side of every host's veth pair (deleting a namespace removes its
        pair, but the kernel may do it after ``ip netns del`` returns, and a run starting then finds the
        link still there), then the bridge. ``namespaces``: the ones that exist (default: every host)."""
        names = namespaces if namespaces is not None else [self.host(i).namespace for i in range(1, self.hosts + 1)]
        veths = [["ip", "link", "del", f"{self.prefix}v{i}"] for i in range(1, self.hosts + 1)]
        return [["ip", "netns", "del", n] for n in names] + veths + [["ip", "link", "del", self.bridge]]

    def leftovers(self) -> list[str]:
        """Namespaces with this testbed's prefix that exist now."""
        return [n for n in parse_netns_list(self.lister()) if n.startswith(f"{self.prefix}-h")]

    def teardown(self) -> None:
        for argv in self.teardown_commands(self.leftovers()):
            self.runner(argv, False)

    @contextlib.contextmanager
    def up(self) -> Iterator[Testbed]:
        """The hosts, removed on leaving whatever the reason (see the module docstring)."""
        previous: dict[int, Any] = {}

        def terminate(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, terminate)
        room = neighbour_room(self.hosts, self.neighbours) if self.neighbours else contextlib.nullcontext()
        try:
            self.teardown()  # what a killed run left behind
            with room:
                for argv in self.setup_commands():
                    self.runner(argv, True)
                yield self
        finally:
            # A second Ctrl-C or SIGTERM during the teardown must not leave hosts behind.
            with _signals_ignored():
                self.teardown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def interface_bytes(host: Host, direction: str = "tx") -> int:
    """Bytes ``host``'s ``eth0`` has sent (``tx``) or received (``rx``), headers included."""
    out = subprocess.run(
        host.exec(["cat", f"/sys/class/net/eth0/statistics/{direction}_bytes"]),
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)
