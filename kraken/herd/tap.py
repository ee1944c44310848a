"""``twistd kraken-herd``: origin, tracker, build-index, proxy and N agents in one process.

The herd's YAML has a ``state_dir``, one section per component, each holding
that component's own keys (as in ``etc/kraken/<component>.yaml``), and for
the agents: ``agents`` (how many, default 3; ``--agents N`` overrides it),
``agent_base_port`` (default 16000) and ``agent``, the keys every agent
shares. Every key has a default: listeners on the ports of DESIGN.md, all
state under ``state_dir``, and each component pointed at the others.

Agent k (k = 0, 1, ...) listens on ``host``: registry ``base+1000k``, P2P
``base+1+1000k`` (advertised as ``host:<port>``), agent API
``base+2+1000k``; its state is ``state_dir/agent-k``. Those keys differ per
agent, so ``agent`` may not set them.

``host`` (``--host`` overrides it; default 127.0.0.1) is the one address every
default listener binds and every default URL and advertised address names:
``host: "::1"`` runs the whole herd on IPv6 loopback (listeners
``tcp:PORT:interface=\\:\\:1``, URLs ``http://[::1]:PORT``).

``--secure`` turns on TLS, mutual TLS between the daemons and Basic auth on the
proxy, with a development CA and a generated user under ``state_dir/secure``
(see ``kraken.herd.secure``).
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from kraken import config
from kraken.agent.config import AgentConfig
from kraken.agent.tap import agent_service
from kraken.buildindex.config import BuildIndexConfig
from kraken.buildindex.tap import build_index_service
from kraken.core.address import check_ip, join_host_port
from kraken.herd.secure import SecureHerd, add_secure_defaults, ensure_secure, https, parse_hosts
from kraken.net.endpoints import endpoint_url, host_port, listen_description
from kraken.origin.config import OriginConfig
from kraken.origin.tap import origin_service
from kraken.proxy.config import ProxyConfig
from kraken.proxy.tap import proxy_service
from kraken.tracker.config import TrackerConfig
from kraken.tracker.tap import tracker_service

SECTIONS = ("origin", "tracker", "build_index", "proxy", "agent")
KEYS = ("state_dir", "host", "agents", "agent_base_port", *SECTIONS)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_STATE_DIR = "/var/lib/kraken/herd"
DEFAULT_AGENTS = 3
DEFAULT_AGENT_BASE_PORT = 16000
#: Agent keys the herd sets for each agent (``p2p`` sub-keys as ``p2p.<key>``).
PER_AGENT_KEYS = ("listen_registry", "listen_api", "store.root", "p2p.listen", "p2p.advertise")


@attrs.frozen
class HerdConfig:
    state_dir: str
    origin: OriginConfig
    tracker: TrackerConfig
    build_index: BuildIndexConfig
    proxy: ProxyConfig
    agents: tuple[AgentConfig, ...] = ()
    secure: SecureHerd | None = None


def agent_ports(base: int, k: int) -> tuple[int, int, int]:
    """(registry, P2P, API) ports of agent ``k``."""
    first = base + 1000 * k
    return first, first + 1, first + 2


def herd_config(
    loaded: config.Loaded,
    state_dir: str | None = None,
    agents: int | None = None,
    secure: bool = False,
    secure_hosts: tuple[str, ...] = (),
    host: str | None = None,
) -> HerdConfig:
    """Fill in the herd's defaults around ``loaded`` and build every section (``secure``: see the module;
    ``secure_hosts``: what its certificates name besides loopback; ``host``: overrides the file's)."""
    data = _known_keys(loaded)
    state = _state_dir(loaded, state_dir)
    ip = _host(loaded, host)
    count, base_port = _agents(loaded, agents)
    origin_listen = _listen(data, "origin", listen_description(ip, 15002))
    tracker_listen = _listen(data, "tracker", listen_description(ip, 15003))
    index_listen = _listen(data, "build_index", listen_description(ip, 15004))
    try:
        origin_url, tracker_url, index_url = map(endpoint_url, (origin_listen, tracker_listen, index_listen))
    except ValueError as e:
        raise config.ConfigError(str(e), file=loaded.file) from None
    sec = _secure(loaded, state, count, secure_hosts) if secure else None
    if sec is not None:
        origin_url, tracker_url, index_url = map(https, (origin_url, tracker_url, index_url))

    defaults: dict[str, Any] = {
        "tracker": {"listen_http": tracker_listen, "origin": origin_url},
        "build_index": {
            "listen_http": index_listen,
            "origin": origin_url,
            "database": os.path.join(state, "build-index", "tags.db"),
        },
        "proxy": {
            "listen_http": listen_description(ip, 15000),
            "origin": origin_url,
            "build_index": index_url,
            "uploads": {"root": os.path.join(state, "proxy", "uploads")},
        },
    }
    if sec is not None:
        for section in ("tracker", "build_index", "proxy"):
            add_secure_defaults(defaults[section], sec, section)
    merged = loaded.over(defaults, "<herd defaults>")
    return HerdConfig(
        state_dir=state,
        origin=_origin_config(loaded, state, ip, origin_listen, sec),
        tracker=config.build(TrackerConfig, merged, ("tracker",)),
        build_index=config.build(BuildIndexConfig, merged, ("build_index",)),
        proxy=config.build(ProxyConfig, merged, ("proxy",)),
        agents=tuple(
            _agent_config(loaded, k, state, ip, base_port, (tracker_url, index_url), sec) for k in range(count)
        ),
        secure=sec,
    )


def _agents(loaded: config.Loaded, override: int | None) -> tuple[int, int]:
    """(how many agents, the first agent's base port): ``--agents``, else ``agents``; ``agent_base_port``."""
    count = _count(loaded, "agents", DEFAULT_AGENTS, 0) if override is None else override
    base_port = _count(loaded, "agent_base_port", DEFAULT_AGENT_BASE_PORT, 1)
    if base_port + 1000 * max(count - 1, 0) + 2 > 65535:
        raise config.ConfigError(
            f"{count} agents from port {base_port} do not fit below 65536",
            file=loaded.source(("agent_base_port",)),
            key=("agent_base_port",),
        )
    return count, base_port


def _known_keys(loaded: config.Loaded) -> dict[str, Any]:
    """The herd file's data, once every top-level key is known."""
    unknown = sorted(set(loaded.data) - set(KEYS))
    if unknown:
        known = ", ".join(sorted(KEYS))
        raise config.ConfigError(
            f"unknown key (known keys here: {known})", file=loaded.source((unknown[0],)), key=(unknown[0],)
        )
    return loaded.data


def _secure(loaded: config.Loaded, state: str, count: int, hosts: tuple[str, ...]) -> SecureHerd:
    try:
        return ensure_secure(state, count, hosts)
    except OSError as e:
        where = e.filename or os.path.join(state, "secure")
        raise config.ConfigError(f"--secure: cannot write {where}: {e.strerror}", file=loaded.file) from None


def _state_dir(loaded: config.Loaded, override: str | None) -> str:
    """``--state-dir``, else ``state_dir``, else the default; absolute."""
    state = override or loaded.data.get("state_dir", DEFAULT_STATE_DIR)
    if not isinstance(state, str):
        raise config.ConfigError("must be a path", file=loaded.source(("state_dir",)), key=("state_dir",))
    return os.path.abspath(state)


def _host(loaded: config.Loaded, override: str | None) -> str:
    """``--host``, else ``host``, else 127.0.0.1: one IP address (not a wildcard: peers dial it)."""
    value = override if override is not None else loaded.data.get("host", DEFAULT_HOST)
    where: dict[str, Any] = {"file": "--host"}
    if override is None:
        where = {"file": loaded.source(("host",)), "key": ("host",)}
    try:
        ip = check_ip(value)
    except ValueError as e:
        raise config.ConfigError(str(e), **where) from None
    if ipaddress.ip_address(ip).is_unspecified:
        raise config.ConfigError(
            f"{ip} listens everywhere, but the herd also advertises its host to peers: give one address", **where
        )
    return ip


def _listen(data: dict[str, Any], section: str, default: str, key: str = "listen_http") -> str:
    """The endpoint ``section.key`` (dotted) of the herd's YAML, or ``default``."""
    value: Any = data.get(section, {})
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, str) else default


def _origin_config(
    loaded: config.Loaded, state: str, ip: str, listen_http: str, sec: SecureHerd | None
) -> OriginConfig:
    origin_defaults: dict[str, Any] = {"listen_http": listen_http, "store": {"root": os.path.join(state, "origin")}}
    # The origin seeds over P2P on host:15001, advertised as such (the tracker learns it from the origin).
    p2p_listen = _listen(loaded.data, "origin", listen_description(ip, 15001), "p2p.listen")
    origin_defaults["p2p"] = {"listen": p2p_listen}
    advertise = host_port(p2p_listen, ip)
    if advertise is not None:
        origin_defaults["p2p"]["advertise"] = advertise
    if sec is not None:
        add_secure_defaults(origin_defaults, sec, "origin")
    return config.build(OriginConfig, loaded.over({"origin": origin_defaults}, "<herd defaults>"), ("origin",))


def _count(loaded: config.Loaded, key: str, default: int, minimum: int) -> int:
    value = loaded.data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise config.ConfigError(
            f"must be an integer of at least {minimum}, not {value!r}", file=loaded.source((key,)), key=(key,)
        )
    return value


def _agent_config(
    loaded: config.Loaded,
    k: int,
    state: str,
    ip: str,
    base_port: int,
    urls: tuple[str, str],
    sec: SecureHerd | None,
) -> AgentConfig:
    tracker_url, index_url = urls
    shared = loaded.section("agent")
    for dotted in PER_AGENT_KEYS:
        key = tuple(dotted.split("."))
        value: Any = shared.data
        for part in key:
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            where = ("agent", *key)
            raise config.ConfigError(
                "set per agent by the herd (agent k: ports agent_base_port+1000k..+2, state in state_dir/agent-k)",
                file=loaded.source(where),
                key=where,
            )
    registry, p2p, api = agent_ports(base_port, k)
    defaults: dict[str, Any] = {
        "agent": {
            "listen_registry": listen_description(ip, registry),
            "listen_api": listen_description(ip, api),
            "tracker": tracker_url,
            "build_index": index_url,
            "store": {"root": os.path.join(state, f"agent-{k}")},
            # The herd's tracker is this very version, so its agents report their progress (the swarm page).
            "p2p": {
                "listen": listen_description(ip, p2p),
                "advertise": join_host_port(ip, p2p),
                "announce_progress": True,
            },
        }
    }
    if sec is not None:
        add_secure_defaults(defaults["agent"], sec, "agent", k)
    return config.build(AgentConfig, loaded.over(defaults, "<herd defaults>"), ("agent",))


class Options(usage.Options):
    optFlags = [
        ["secure", "s", "TLS and mutual TLS everywhere, Basic auth on the proxy (CA and user in state_dir/secure)"]
    ]
    optParameters = [
        ["config", "c", None, "YAML config file (supports extends:); every key has a default"],
        ["state-dir", "d", None, "Directory for all state (overrides state_dir)"],
        ["host", None, None, "The address every listener binds and advertises (overrides host; default "
         f"{DEFAULT_HOST}; ::1 runs the herd on IPv6)"],
        ["agents", "a", None, f"Number of agents (overrides agents; default {DEFAULT_AGENTS})"],
        ["secure-hosts", None, None, "With --secure: host names and IP addresses, comma-separated, that the "
         "certificates name besides loopback (a herd reached over the LAN)"],
    ]  # fmt: skip

    def postOptions(self) -> None:
        agents: int | None = None
        if self["agents"] is not None:
            if not str(self["agents"]).isdigit():
                raise usage.UsageError(f"--agents must be a number of agents (0 or more), not {self['agents']!r}")
            agents = int(self["agents"])
        try:
            hosts = parse_hosts(self["secure-hosts"], bool(self["secure"]))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        try:
            loaded = config.load(self["config"]) if self["config"] else config.from_mapping({}, "<command line>")
            self["parsed"] = herd_config(loaded, self["state-dir"], agents, bool(self["secure"]), hosts, self["host"])
        except config.ConfigError as e:
            raise usage.UsageError(str(e)) from None


class Herd(MultiService):
    log = Logger()

    def __init__(self, cfg: HerdConfig) -> None:
        super().__init__()
        self.config = cfg

    def startService(self) -> None:
        super().startService()
        if self.config.secure is not None:
            self._log_secure(self.config.secure)
        agents = [host_port(a.listen_registry, DEFAULT_HOST) or a.listen_registry for a in self.config.agents]
        self.log.info(
            "kraken-herd ready: push to the registry on {registry}, pull from the agents' registries on {agents}; "
            "tracker at {tracker}, origin at {origin}, build-index at {build_index}, state in {state_dir}",
            registry=self.config.proxy.listen_http,
            agents=", ".join(agents) or "(no agents)",
            agent_registries=agents,
            tracker=self.config.tracker.listen_http,
            origin=self.config.build_index.origin,
            build_index=self.config.proxy.build_index,
            state_dir=self.config.state_dir,
        )

    def _log_secure(self, sec: SecureHerd) -> None:
        password = f"password {sec.password}" if sec.new_password else "password"
        self.log.info(
            "kraken-herd --secure: TLS on every link, mutual TLS inside, with the development CA {ca} (clients: "
            "skopeo --dest-cert-dir/--src-cert-dir {trust_dir}); the registry asks for Basic auth: user {user}, "
            "{password} in {credentials} (readable by its owner only); certificates for loopback{hosts}{made}",
            ca=sec.ca.ca,
            trust_dir=sec.ca.trust_dir,
            user=sec.user,
            password=password,
            credentials=sec.credentials,
            made=f"; made this start: {', '.join(sec.ca.made)}" if sec.ca.made else "",
            hosts="".join(f", {h}" for h in sec.hosts),
        )


def herd_service(cfg: HerdConfig, reactor: Any) -> Herd:
    herd = Herd(cfg)
    # Start order: origin first, then what depends on it; stop in reverse (agents first).
    services = [
        ("origin", origin_service(cfg.origin, reactor)),
        ("tracker", tracker_service(cfg.tracker, reactor)),
        ("build-index", build_index_service(cfg.build_index, reactor)),
        ("proxy", proxy_service(cfg.proxy, reactor)),
    ]
    services += [(f"agent-{k}", agent_service(agent, reactor)) for k, agent in enumerate(cfg.agents)]
    for name, service in services:
        service.setName(name)
        service.setServiceParent(herd)
    return herd


def makeService(options: Options, reactor: Any = None) -> Herd:
    if reactor is None:
        from twisted.internet import reactor
    return herd_service(options["parsed"], reactor)
