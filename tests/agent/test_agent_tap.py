"""The agent's config, options and service wiring (on a MemoryReactorClock; no sockets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python import usage

from kraken.agent.config import AgentConfig, StoreConfig
from kraken.agent.tap import Options, agent_service, makeService
from kraken.net import HTTPClientService
from kraken.p2p.config import P2PConfig
from kraken.p2p.scheduler import Scheduler
from kraken.workers import ThreadPoolService

EXAMPLES = Path(__file__).resolve().parents[2] / "etc" / "kraken"


def parse(tmp_path: Path, text: str) -> AgentConfig:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    options = Options()
    options.parseOptions(["--config", str(path)])
    parsed: AgentConfig = options["parsed"]
    return parsed


def test_defaults_without_a_file() -> None:
    options = Options()
    options.parseOptions([])
    cfg = options["parsed"]
    assert cfg == AgentConfig()
    assert cfg.listen_registry == "tcp:16000:interface=127.0.0.1"
    assert cfg.listen_api == "tcp:16002:interface=127.0.0.1"
    assert cfg.p2p == P2PConfig()
    assert cfg.p2p.listen == "tcp:16001"
    assert not cfg.p2p.super_seed  # a finished agent serves whatever it is asked
    assert (cfg.tracker, cfg.build_index) == ("http://127.0.0.1:15003", "http://127.0.0.1:15004")
    assert cfg.store.root == "/var/lib/kraken/agent"
    assert cfg.answer_timeout == 3.0  # containerd tries its next host after at most this


def test_example_config_loads_with_the_defaults() -> None:
    options = Options()
    options.parseOptions(["--config", str(EXAMPLES / "agent.yaml")])
    assert options["parsed"] == AgentConfig()


def test_values_are_read(tmp_path: Path) -> None:
    cfg = parse(
        tmp_path,
        "listen_registry: 'tcp:5000:interface=127.0.0.1'\ntracker: http://t:1\n"
        "p2p: {advertise: '10.0.0.7:16001', conn_tti: 1m, bandwidth: {enabled: false}}\nmax_manifest_size: 1MiB\n",
    )
    assert cfg.listen_registry == "tcp:5000:interface=127.0.0.1"
    assert cfg.tracker == "http://t:1"
    assert cfg.p2p.advertised() == ("10.0.0.7", 16001)
    assert cfg.p2p.conn_tti == 60.0
    assert not cfg.p2p.bandwidth.enabled
    assert cfg.max_manifest_size == 1 << 20


@pytest.mark.parametrize(
    "text,where",
    [
        ("bogus: 1\n", ": bogus: unknown key"),
        ("store: {rot: /x}\n", ": store.rot: unknown key"),
        ("threads: {cpu: 0}\n", ": threads: cpu must be positive"),
        ("listen_api: 'tcp:nope'\n", ": listen_api: not a usable endpoint"),
        ("p2p: {listen: 'tcp:nope'}\n", ": p2p: listen: not a usable endpoint"),
        ("p2p: {conn_tti: soon}\n", ": p2p.conn_tti: not a duration"),
        ("p2p: {bandwidth: {egress_bits_per_sec: lots}}\n", ": p2p.bandwidth.egress_bits_per_sec: must be an integer"),
        ("p2p: {advertise: nowhere}\n", ": p2p: address must be ip:port"),
        (
            "p2p: {advertise: '::1:16001'}\n",
            ": p2p: address must be ip:port ([ip]:port for IPv6): an IPv6",
        ),
        (
            "p2p: {advertise: '[fe80::1%eth0]:16001'}\n",
            ": p2p: address must be ip:port ([ip]:port for IPv6): IPv6 zone",
        ),
        ("listen_registry: 'tcp:16000:interface=::1'\n", ": listen_registry: not a usable endpoint description"),
        (
            "listen_registry: 'tcp:16000:interface=\\:\\:'\n",
            ": listen_registry 'tcp:16000:interface=\\\\:\\\\:' is not a loopback",
        ),
        ("max_manifest_size: huge\n", ": max_manifest_size: not a size"),
        ("answer_timeout: soon\n", ": answer_timeout: not a duration"),
        ("answer_timeout: 0\n", ": answer_timeout must be positive"),
    ],
)
def test_bad_values_are_usage_errors_naming_file_and_key(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(usage.UsageError) as e:
        parse(tmp_path, text)
    assert str(e.value).startswith(str(tmp_path / "agent.yaml") + where), str(e.value)


def test_ipv6_loopback_listeners_and_advertise(tmp_path: Path) -> None:
    cfg = parse(
        tmp_path,
        "listen_registry: 'tcp:16000:interface=\\:\\:1'\nlisten_api: 'tcp6:16002:interface=\\:\\:1'\n"
        "p2p: {listen: 'tcp:16001:interface=\\:\\:1'}\n",
    )
    assert cfg.p2p.advertised() == ("::1", 16001)  # derived from the listener
    assert parse(tmp_path, "p2p: {advertise: '[2001:db8::7]:16001'}\n").p2p.advertised() == ("2001:db8::7", 16001)


def config(tmp_path: Path) -> AgentConfig:
    return AgentConfig(
        listen_registry="tcp:26000:interface=127.0.0.1",
        listen_api="tcp:26002:interface=127.0.0.1",
        store=StoreConfig(root=str(tmp_path / "state")),
        p2p=P2PConfig(listen="tcp:26001:interface=127.0.0.1"),
    )


def test_service_wiring(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    top = agent_service(config(tmp_path), reactor)
    everything = list(top)
    assert everything[0].name == "tls-reload"  # SIGHUP reloads certificates, or is logged: never a stop
    children = everything[1:]
    assert [c.name for c in children] == [
        "threads-cpu", "threads-io", "http-client", "scheduler", "cache-cleanup", "registry", "api", "p2p",
    ]  # fmt: skip
    assert [type(c) for c in children[:4]] == [ThreadPoolService, ThreadPoolService, HTTPClientService, Scheduler]
    assert (tmp_path / "state" / "cache").is_dir()

    stopped: list[Any] = []
    try:
        with capturedLogs() as events:
            top.privilegedStartService()
            top.startService()
        servers = {port: interface for port, _factory, _backlog, interface in reactor.tcpServers}
        assert servers == {26000: "127.0.0.1", 26001: "127.0.0.1", 26002: "127.0.0.1"}
        # (MemoryReactor's ports report 0.0.0.0 whatever the interface.)
        components = {e["component"]: e["address"].rpartition(":")[2] for e in events if "address" in e}
        assert components == {"agent registry": "26000", "agent API": "26002", "agent P2P": "26001"}
    finally:
        # Always stop: running pool threads would keep the test process alive.
        top.stopService().addBoth(stopped.append)
    [results] = stopped
    assert all(ok for ok, _ in results), results
    assert [c for c in reactor.getDelayedCalls() if c.active()] == []
    assert not top.running


def test_make_service_uses_the_given_reactor(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(f"store: {{root: {tmp_path / 'state'}}}\np2p: {{advertise: '127.0.0.1:16001'}}\n")
    options = Options()
    options.parseOptions(["--config", str(path)])
    reactor = MemoryReactorClock()
    top = makeService(options, reactor=reactor)
    top.privilegedStartService()
    assert sorted(port for port, *_ in reactor.tcpServers) == [16000, 16001, 16002]
