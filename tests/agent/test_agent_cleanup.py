"""The agent's cleanup: config keys (the origin's), wiring, counters in /stats, pins around blobs served."""

from __future__ import annotations

import gc
import re
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from kraken.agent.cleanup import Pins
from kraken.agent.config import AgentConfig, StoreConfig
from kraken.agent.tap import Options, agent_service
from kraken.core import Digest
from kraken.p2p.config import P2PConfig
from kraken.store import CacheCleanup
from kraken.store.config import CleanupConfig

DIGEST = Digest.from_bytes(b"blob")


def parse(tmp_path: Path, text: str) -> AgentConfig:
    """``text`` as agent.yaml, through the options as twistd reads them."""
    (tmp_path / "agent.yaml").write_text(text)
    options = Options()
    options.parseOptions(["--config", str(tmp_path / "agent.yaml")])
    return options["parsed"]  # type: ignore[no-any-return]


def test_the_keys_are_the_origins(tmp_path: Path) -> None:
    assert AgentConfig().cleanup == CleanupConfig()  # off: unchanged behaviour unless enabled
    cfg = parse(
        tmp_path, "cleanup: {enabled: true, interval: 10m, tti: 2h, aggressive_threshold: 90, aggressive_tti: 30m}\n"
    )
    assert cfg.cleanup == CleanupConfig(
        enabled=True, interval=600.0, tti=7200.0, aggressive_threshold=90, aggressive_tti=1800.0
    )


BAD = {
    "cleanup: {tti: soon}\n": ": cleanup.tti: not a duration",
    "cleanup: {interval: 0}\n": ": cleanup: interval must be positive",
    "cleanup: {aggressive_threshold: 101}\n": ": cleanup: aggressive_threshold must be a percentage",
    "cleanup: {tti: 1h, aggressive_tti: 2h}\n": ": cleanup: aggressive_tti (7200.0s) must not be above tti",
    "cleanup: {ttl: 1h}\n": ": cleanup.ttl: unknown key",
}


@pytest.mark.parametrize("text", sorted(BAD))
def test_bad_values_name_file_and_key(tmp_path: Path, text: str) -> None:
    """Each error starts with the file, then the key."""
    file = tmp_path / "agent.yaml"
    with pytest.raises(usage.UsageError, match="^" + re.escape(f"{file}{BAD[text]}")):
        parse(tmp_path, text)


def config(tmp_path: Path, **cleanup: Any) -> AgentConfig:
    return AgentConfig(
        listen_registry="tcp:26000:interface=127.0.0.1",
        listen_api="tcp:26002:interface=127.0.0.1",
        store=StoreConfig(root=str(tmp_path / "state")),
        p2p=P2PConfig(listen="tcp:26001:interface=127.0.0.1"),
        cleanup=CleanupConfig(**cleanup),
    )


@pytest.mark.parametrize("enabled", [None, True])
def test_on_unless_disabled_it_runs_after_the_scheduler_and_collects_partials(
    tmp_path: Path, enabled: bool | None
) -> None:
    broken = tmp_path / "state" / "downloads" / DIGEST.hex
    broken.mkdir(parents=True)
    (broken / "data").write_bytes(b"half a blob, no metainfo")
    top = agent_service(config(tmp_path, enabled=enabled), MemoryReactorClock())
    names = [c.name for c in top]
    assert names[names.index("scheduler") + 1] == "cache-cleanup"
    cleanup = top.getServiceNamed("cache-cleanup")
    assert isinstance(cleanup, CacheCleanup) and cleanup.counts["partials_collected"] == 1
    assert not broken.exists()


def test_off_when_disabled(tmp_path: Path) -> None:
    top = agent_service(config(tmp_path, enabled=False), MemoryReactorClock())
    assert "cache-cleanup" not in [c.name for c in top]


class Inner(Resource):
    isLeaf = True

    def render(self, request: Any) -> Any:
        return NOT_DONE_YET


def test_a_served_blob_is_pinned_until_its_request_finishes() -> None:
    pins = Pins()
    resource = pins.resource(DIGEST, Inner())
    assert pins.held(DIGEST)
    request = DummyRequest([b""])
    assert resource.render(request) == NOT_DONE_YET
    del resource
    gc.collect()
    assert pins.held(DIGEST)  # still streaming
    request.finish()
    assert not pins.held(DIGEST)


def test_a_pinned_resource_never_rendered_is_released_when_dropped() -> None:
    pins = Pins()
    resource = pins.resource(DIGEST, Inner())
    assert pins.held(DIGEST)
    del resource
    gc.collect()
    assert not pins.held(DIGEST)
