"""The herd's config defaults and its service wiring (no sockets)."""

import os
from pathlib import Path

import attrs
import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python import usage

from kraken import config
from kraken.herd.tap import Options, herd_config, herd_service
from kraken.origin.config import OriginConfig

# The origin's P2P listener (15001) comes with the origin's p2p section.
HERD_YAML = str(Path(__file__).resolve().parents[2] / "etc" / "kraken" / "herd.yaml")
ORIGIN_P2P = [15001] if "p2p" in attrs.fields_dict(OriginConfig) else []


def options(*argv):
    o = Options()
    o.parseOptions(list(argv))
    return o


def test_defaults_follow_the_design_ports_and_state_dir(tmp_path):
    cfg = options("--state-dir", str(tmp_path))["parsed"]
    assert cfg.state_dir == str(tmp_path)
    assert cfg.proxy.listen_http == "tcp:15000:interface=127.0.0.1"
    assert cfg.origin.listen_http == "tcp:15002:interface=127.0.0.1"
    assert cfg.tracker.listen_http == "tcp:15003:interface=127.0.0.1"
    assert cfg.build_index.listen_http == "tcp:15004:interface=127.0.0.1"
    assert cfg.origin.store.root == os.path.join(tmp_path, "origin")
    assert cfg.build_index.database == os.path.join(tmp_path, "build-index", "tags.db")
    assert cfg.proxy.uploads.root == os.path.join(tmp_path, "proxy", "uploads")
    assert cfg.proxy.origin == cfg.build_index.origin == cfg.tracker.origin == "http://127.0.0.1:15002"
    assert cfg.proxy.build_index == "http://127.0.0.1:15004"


def test_three_agents_by_default_on_their_design_ports(tmp_path):
    cfg = options("--state-dir", str(tmp_path))["parsed"]
    assert len(cfg.agents) == 3
    for k, agent in enumerate(cfg.agents):
        base = 16000 + 1000 * k
        assert agent.listen_registry == f"tcp:{base}:interface=127.0.0.1"
        assert agent.p2p.listen == f"tcp:{base + 1}:interface=127.0.0.1"
        assert agent.p2p.advertised() == ("127.0.0.1", base + 1)
        assert agent.listen_api == f"tcp:{base + 2}:interface=127.0.0.1"
        assert agent.store.root == os.path.join(tmp_path, f"agent-{k}")
        assert agent.tracker == "http://127.0.0.1:15003"
        assert agent.build_index == "http://127.0.0.1:15004"
    assert len({a.p2p.the_peer_id() for a in cfg.agents}) == 3


def test_agents_option_overrides_the_file(tmp_path):
    path = tmp_path / "herd.yaml"
    path.write_text("agents: 5\n")
    assert len(options("--config", str(path), "-d", str(tmp_path))["parsed"].agents) == 5
    assert len(options("--config", str(path), "-d", str(tmp_path), "--agents", "1")["parsed"].agents) == 1
    assert options("--agents", "0", "-d", str(tmp_path))["parsed"].agents == ()


def test_agents_share_the_agent_section_and_move_with_the_base_port(tmp_path):
    path = tmp_path / "herd.yaml"
    path.write_text(
        "agents: 2\nagent_base_port: 30000\n"
        "tracker: {listen_http: 'tcp:25003:interface=127.0.0.1'}\n"
        "agent: {p2p: {bandwidth: {enabled: false}, conn_tti: 1m}, max_manifest_size: 1MiB}\n"
    )
    cfg = herd_config(config.load(str(path)), str(tmp_path))
    assert [a.listen_registry for a in cfg.agents] == ["tcp:30000:interface=127.0.0.1", "tcp:31000:interface=127.0.0.1"]
    assert [a.listen_api for a in cfg.agents] == ["tcp:30002:interface=127.0.0.1", "tcp:31002:interface=127.0.0.1"]
    assert all(a.tracker == "http://127.0.0.1:25003" for a in cfg.agents)
    assert all(not a.p2p.bandwidth.enabled and a.p2p.conn_tti == 60.0 for a in cfg.agents)
    assert all(a.max_manifest_size == 1 << 20 for a in cfg.agents)


def test_components_follow_moved_listeners(tmp_path):
    path = tmp_path / "herd.yaml"
    path.write_text(
        f"state_dir: {tmp_path}/s\n"
        "origin: {listen_http: 'tcp:25002:interface=127.0.0.1'}\n"
        "build_index: {listen_http: 'tcp:25004'}\n"
        "proxy: {registry: {max_manifest_size: 1MiB}}\n"
    )
    cfg = herd_config(config.load(str(path)))
    assert cfg.proxy.origin == cfg.build_index.origin == cfg.tracker.origin == "http://127.0.0.1:25002"
    assert cfg.proxy.build_index == "http://127.0.0.1:25004"
    assert all(a.build_index == "http://127.0.0.1:25004" for a in cfg.agents)
    assert cfg.proxy.registry.max_manifest_size == 1 << 20
    assert cfg.origin.store.root == f"{tmp_path}/s/origin"


@pytest.mark.parametrize(
    "text,where",
    [
        ("bogus: 1\n", ": bogus: unknown key"),
        ("proxy: {uploads: {tll: 1h}}\n", ": proxy.uploads.tll: unknown key"),
        ("origin: {store: {piece_lengths: {0: lots}}}\n", ": origin.store.piece_lengths.0: not a size"),
        ("build_index: {max_page: many}\n", ": build_index.max_page: must be an integer"),
        ("tracker: {max_peers: 0}\n", ": tracker: max_peers must be positive"),
        ("agents: -1\n", ": agents: must be an integer of at least 0"),
        ("agents: three\n", ": agents: must be an integer of at least 0"),
        ("agent_base_port: 65000\n", ": agent_base_port: 3 agents from port 65000 do not fit"),
        ("agent: {p2p: {conn_ttl: 1m}}\n", ": agent.p2p.conn_ttl: unknown key"),
        ("agent: {threads: {io: 0}}\n", ": agent.threads: io must be positive"),
        ("agent: {listen_registry: 'tcp:5000'}\n", ": agent.listen_registry: set per agent by the herd"),
        ("agent: {p2p: {advertise: '10.0.0.1:1'}}\n", ": agent.p2p.advertise: set per agent by the herd"),
        ("agent: {store: {root: /x}}\n", ": agent.store.root: set per agent by the herd"),
        ("host: localhost\n", ": host: not an IP address: 'localhost'"),
        ("host: '::'\n", ": host: :: listens everywhere"),
        ("host: 'fe80::1%eth0'\n", ": host: IPv6 zone ids ('%eth0') are not supported"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, where):
    path = tmp_path / "herd.yaml"
    path.write_text(text)
    with pytest.raises(usage.UsageError) as e:
        options("--config", str(path), "--state-dir", str(tmp_path))
    assert str(e.value).startswith(f"{path}{where}"), str(e.value)


@pytest.mark.parametrize("value", ["-1", "x", "1.5"])
def test_bad_agents_option_is_a_usage_error(tmp_path, value):
    with pytest.raises(usage.UsageError, match="--agents"):
        options("--agents", value, "--state-dir", str(tmp_path))


def test_example_config_loads(tmp_path):
    cfg = options("--config", HERD_YAML, "--state-dir", str(tmp_path))["parsed"]
    assert len(cfg.agents) == 3
    assert cfg == options("--state-dir", str(tmp_path))["parsed"]


def test_service_listens_on_every_port_and_stops_cleanly(tmp_path):
    reactor = MemoryReactorClock()
    herd = herd_service(options("--state-dir", str(tmp_path), "--agents", "2")["parsed"], reactor)
    stopped = []
    try:
        with capturedLogs() as events:
            herd.privilegedStartService()
            herd.startService()
        agent_ports = [16000, 16001, 16002, 17000, 17001, 17002]
        assert sorted(port for port, *_ in reactor.tcpServers) == sorted(
            [15000, 15002, 15003, 15004, *ORIGIN_P2P, *agent_ports]
        )
        assert [s.name for s in herd] == ["origin", "tracker", "build-index", "proxy", "agent-0", "agent-1"]
        [ready] = [e for e in events if "kraken-herd ready" in e["log_format"]]
        assert ready["agent_registries"] == ["127.0.0.1:16000", "127.0.0.1:17000"]
        assert ready["agents"] == "127.0.0.1:16000, 127.0.0.1:17000"
    finally:
        herd.stopService().addBoth(stopped.append)
    assert stopped and not herd.running
    assert [c for c in reactor.getDelayedCalls() if c.active()] == []


def test_host_ipv6_moves_every_listener_url_and_advertised_address(tmp_path):
    path = tmp_path / "herd.yaml"
    path.write_text("host: '::1'\nagents: 2\n")
    cfg = options("--config", str(path), "--state-dir", str(tmp_path))["parsed"]
    assert cfg.proxy.listen_http == r"tcp:15000:interface=\:\:1"
    assert cfg.origin.listen_http == r"tcp:15002:interface=\:\:1"
    assert cfg.origin.p2p.listen == r"tcp:15001:interface=\:\:1"
    assert cfg.origin.p2p.advertised() == ("::1", 15001)
    assert cfg.origin.advertised() == "[::1]:15002"
    assert cfg.tracker.listen_http == r"tcp:15003:interface=\:\:1"
    assert cfg.build_index.listen_http == r"tcp:15004:interface=\:\:1"
    assert cfg.proxy.origin == cfg.build_index.origin == cfg.tracker.origin == "http://[::1]:15002"
    assert cfg.proxy.build_index == "http://[::1]:15004"
    for k, agent in enumerate(cfg.agents):
        base = 16000 + 1000 * k
        assert agent.listen_registry == rf"tcp:{base}:interface=\:\:1"  # loopback: the agent's check passes
        assert agent.listen_api == rf"tcp:{base + 2}:interface=\:\:1"
        assert agent.p2p.listen == rf"tcp:{base + 1}:interface=\:\:1"
        assert agent.p2p.advertised() == ("::1", base + 1)
        assert (agent.tracker, agent.build_index) == ("http://[::1]:15003", "http://[::1]:15004")
    # --host overrides the file; the default stays 127.0.0.1.
    cfg = options("--config", str(path), "--state-dir", str(tmp_path), "--host", "127.0.0.1")["parsed"]
    assert cfg == options("--state-dir", str(tmp_path), "--agents", "2")["parsed"]


def test_bad_host_option_is_a_usage_error(tmp_path):
    with pytest.raises(usage.UsageError, match=r"^--host: not an IP address: 'origin-1'"):
        options("--host", "origin-1", "--state-dir", str(tmp_path))


def test_ipv6_herd_listens_on_ipv6_and_logs_bracketed_registries(tmp_path):
    reactor = MemoryReactorClock()
    herd = herd_service(options("--state-dir", str(tmp_path), "--agents", "1", "--host", "::1")["parsed"], reactor)
    stopped = []
    try:
        with capturedLogs() as events:
            herd.privilegedStartService()
            herd.startService()
        assert {interface for _, _, _, interface in reactor.tcpServers} == {"::1"}
        [ready] = [e for e in events if "kraken-herd ready" in e["log_format"]]
        assert ready["agent_registries"] == ["[::1]:16000"]
    finally:
        herd.stopService().addBoth(stopped.append)
    assert stopped and not herd.running
