"""Fixtures of the integration tests: real clients (skopeo, python-dxf) against the session's kraken-herd.

``target`` runs a test twice: against the session's plain herd (``herd``), and against ``herd_secure``, one
``twistd -n kraken-herd --secure`` for the session (TLS on every link, mutual TLS inside, P2P over mutual TLS,
Basic auth on the proxy; the development CA and the user under its ``state_dir/secure``), started on first use.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from servers import ServerProcess

from kraken.cli.certs import ensure_dev_ca
from kraken.cli.image import Layout, write_layout

from ._tools import Access, Target, free_agent_base, free_ports

_HERE = __file__.rsplit("/", 1)[0]

BIG_LAYER = "64MiB"
SECURE_AGENTS = 3
# As the plain session herd (tests/conftest.py): the origin's P2P egress capped at 25 MB/s, so agents pulling
# together gain by trading pieces.
ORIGIN_EGRESS_BITS = 200_000_000


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.path).startswith(_HERE + "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def big_image(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """An OCI layout: 3 uncompressed layers (one of 64 MiB seeded random data) and a 2-platform index."""
    return write_layout(
        str(tmp_path_factory.mktemp("big-image") / "layout"),
        tag="v1",
        layers=3,
        random_layer_size=BIG_LAYER,
        seed="integration-big-image",
        index=True,
    )


@pytest.fixture
def registry_ref(herd: Any) -> Any:
    """``registry_ref("repo", "tag")`` -> ``docker://127.0.0.1:<port>/repo:tag`` (the plain session herd)."""
    return Target("plain", herd).ref


# --------------------------------------------------------------------------- the secure herd


class SecureHerdRun(ServerProcess):
    """``twistd -n kraken-herd --secure`` with ``agents`` agents on free loopback ports, state in ``base/state``,
    started and ready; it offers the addresses tests use (as the plain herd does), its CA and its user."""

    host = "127.0.0.1"

    def __init__(self, base: str, twistd: Any, agents: int) -> None:
        self.ports = free_ports(5)  # proxy, origin, tracker, build-index, origin P2P
        self.agent_base = free_agent_base(agents, set(self.ports))
        self.state_dir = os.path.join(base, "state")
        proxy, origin, tracker, index, origin_p2p = (f"tcp:{port}:interface={self.host}" for port in self.ports)
        bandwidth = {"enabled": True, "egress_bits_per_sec": ORIGIN_EGRESS_BITS}
        config = {
            "state_dir": self.state_dir, "agents": agents, "agent_base_port": self.agent_base,
            "proxy": {"listen_http": proxy}, "tracker": {"listen_http": tracker}, "build_index": {"listen_http": index},
            "origin": {"listen_http": origin, "p2p": {"listen": origin_p2p, "bandwidth": bandwidth}},
        }  # fmt: skip
        config_path = os.path.join(base, "herd-secure.yaml")
        with open(config_path, "w") as f:
            yaml.safe_dump(config, f)
        argv = twistd.command("kraken-herd", "--secure", "--config", config_path)
        super().__init__("kraken-herd --secure", argv, re.compile("kraken-herd ready"), env=twistd.env)

    @property
    def secure_dir(self) -> str:
        return os.path.join(self.state_dir, "secure")

    @property
    def registry(self) -> str:
        return f"{self.host}:{self.ports[0]}"

    @property
    def origin_url(self) -> str:
        return f"https://{self.host}:{self.ports[1]}"

    def agent_registry(self, k: int) -> str:
        return f"{self.host}:{self.agent_base + 1000 * k}"

    def agent_api(self, k: int) -> str:
        return f"https://{self.host}:{self.agent_base + 1000 * k + 2}"

    def target(self) -> Target:
        """How clients reach this herd: skopeo with the CA directory (and the user at the proxy), and the tests'
        own reads of the internal APIs with a certificate of the herd's CA (mutual TLS)."""
        ca = ensure_dev_ca(self.secure_dir, ["tests"])
        context = ssl.create_default_context(cafile=ca.ca)
        context.load_cert_chain(*ca.pairs["tests"])
        with open(os.path.join(self.secure_dir, "credentials"), encoding="utf-8") as f:
            creds = f.read().strip()
        return Target("secure", self, Access(ca.trust_dir, creds), Access(ca.trust_dir), context)


_secure_run: SecureHerdRun | None = None


@pytest.fixture(scope="session")
def herd_secure(tmp_path_factory: pytest.TempPathFactory, twistd: Any) -> Iterator[SecureHerdRun]:
    """One ``kraken-herd --secure`` (origin, tracker, build-index, proxy, three agents) for the session."""
    global _secure_run
    run = SecureHerdRun(str(tmp_path_factory.mktemp("herd-secure")), twistd, SECURE_AGENTS)
    _secure_run = run
    try:
        # Origin HTTP and P2P, tracker, build-index, proxy, and each agent's registry, API and P2P: all on TLS.
        listening = [line for line in run.output.snapshot() if " listening on " in line]
        assert len(listening) == 5 + 3 * SECURE_AGENTS, listening
        assert all(line.endswith(", TLS)") for line in listening), listening
        yield run
    finally:
        _secure_run = None
        rc = run.stop()
    lines = run.output.snapshot()
    assert rc in (0, -signal.SIGTERM), f"kraken-herd --secure exited rc={rc}:\n" + "\n".join(lines[-60:])
    lost = [i for i, line in enumerate(lines) if "Unhandled error in Deferred" in line]
    assert not lost, "kraken-herd --secure: unhandled errors in Deferreds:\n" + "\n".join(lines[lost[0] :][:40])


@pytest.fixture(params=["plain", "secure"])
def target(request: pytest.FixtureRequest) -> Target:
    """The session's plain herd, then the secure one (see the module)."""
    if request.param == "plain":
        return Target("plain", request.getfixturevalue("herd"))
    run: SecureHerdRun = request.getfixturevalue("herd_secure")
    request.node._secure_log_start = run.output.count()
    return run.target()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """A failed test against the secure herd: its output during the test, in the report."""
    outcome = yield
    report = outcome.get_result()
    run, start = _secure_run, getattr(item, "_secure_log_start", None)
    if run is not None and start is not None and report.failed:
        lines = run.output.snapshot(start)[-400:]
        report.sections.append(("kraken-herd --secure output during this test", "\n".join(lines) or "(none)"))
