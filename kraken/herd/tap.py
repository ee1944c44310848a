"""``twistd kraken-herd``: origin, build-index and proxy in one process.

The herd's YAML has a ``state_dir`` and one section per component, each
holding that component's own keys (as in ``etc/kraken/<component>.yaml``).
Every key has a default: listeners on the ports of DESIGN.md, all state under
``state_dir``, and each component pointed at the others' listeners.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from kraken import config
from kraken.buildindex.config import BuildIndexConfig
from kraken.buildindex.tap import build_index_service
from kraken.net.endpoints import endpoint_url
from kraken.origin.config import OriginConfig
from kraken.origin.tap import origin_service
from kraken.proxy.config import ProxyConfig
from kraken.proxy.tap import proxy_service

SECTIONS = ("origin", "build_index", "proxy")
DEFAULT_STATE_DIR = "/var/lib/kraken/herd"


@attrs.frozen
class HerdConfig:
    state_dir: str
    origin: OriginConfig
    build_index: BuildIndexConfig
    proxy: ProxyConfig


def herd_config(loaded: config.Loaded, state_dir: str | None = None) -> HerdConfig:
    """Fill in the herd's defaults around ``loaded`` and build every section."""
    unknown = sorted(set(loaded.data) - {"state_dir", *SECTIONS})
    if unknown:
        known = ", ".join(sorted({"state_dir", *SECTIONS}))
        raise config.ConfigError(
            f"unknown key (known keys here: {known})", file=loaded.source((unknown[0],)), key=(unknown[0],)
        )
    state = state_dir or loaded.data.get("state_dir", DEFAULT_STATE_DIR)
    if not isinstance(state, str):
        raise config.ConfigError("must be a path", file=loaded.source(("state_dir",)), key=("state_dir",))
    state = os.path.abspath(state)

    def listen(section: str, default: str) -> str:
        value = loaded.data.get(section, {})
        value = value.get("listen_http", default) if isinstance(value, dict) else default
        return value if isinstance(value, str) else default

    origin_listen = listen("origin", "tcp:15002:interface=127.0.0.1")
    index_listen = listen("build_index", "tcp:15004:interface=127.0.0.1")
    try:
        origin_url, index_url = endpoint_url(origin_listen), endpoint_url(index_listen)
    except ValueError as e:
        raise config.ConfigError(str(e), file=loaded.file) from None
    defaults: dict[str, Any] = {
        "state_dir": state,
        "origin": {"listen_http": origin_listen, "store": {"root": os.path.join(state, "origin")}},
        "build_index": {
            "listen_http": index_listen,
            "origin": origin_url,
            "database": os.path.join(state, "build-index", "tags.db"),
        },
        "proxy": {
            "listen_http": "tcp:15000:interface=127.0.0.1",
            "origin": origin_url,
            "build_index": index_url,
            "uploads": {"root": os.path.join(state, "proxy", "uploads")},
        },
    }
    merged = loaded.over(defaults, "<herd defaults>")
    return HerdConfig(
        state_dir=state,
        origin=config.build(OriginConfig, merged, ("origin",)),
        build_index=config.build(BuildIndexConfig, merged, ("build_index",)),
        proxy=config.build(ProxyConfig, merged, ("proxy",)),
    )


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "YAML config file (supports extends:); every key has a default"],
        ["state-dir", "d", None, "Directory for all state (overrides state_dir)"],
    ]

    def postOptions(self) -> None:
        try:
            loaded = config.load(self["config"]) if self["config"] else config.from_mapping({}, "<command line>")
            self["parsed"] = herd_config(loaded, self["state-dir"])
        except config.ConfigError as e:
            raise usage.UsageError(str(e)) from None


class Herd(MultiService):
    log = Logger()

    def __init__(self, cfg: HerdConfig) -> None:
        super().__init__()
        self.config = cfg

    def startService(self) -> None:
        super().startService()
        self.log.info(
            "kraken-herd ready: registry on {registry}, origin at {origin}, build-index at {build_index}, "
            "state in {state_dir}",
            registry=self.config.proxy.listen_http,
            origin=self.config.build_index.origin,
            build_index=self.config.proxy.build_index,
            state_dir=self.config.state_dir,
        )


def herd_service(cfg: HerdConfig, reactor: Any) -> Herd:
    herd = Herd(cfg)
    # Start order: origin first, then what depends on it; stop in reverse.
    for name, service in (
        ("origin", origin_service(cfg.origin, reactor)),
        ("build-index", build_index_service(cfg.build_index, reactor)),
        ("proxy", proxy_service(cfg.proxy, reactor)),
    ):
        service.setName(name)
        service.setServiceParent(herd)
    return herd


def makeService(options: Options, reactor: Any = None) -> Herd:
    if reactor is None:
        from twisted.internet import reactor
    return herd_service(options["parsed"], reactor)
