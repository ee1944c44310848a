"""The tracker's live swarm page in a real browser (Debian's chromium, driven by selenium through Debian's
chromedriver) while three agents of a real herd pull a multi-MiB image.

The page is opened before the pull, so it first shows that the tracker knows no such swarm, then the agents as
their announces arrive (with ``p2p.announce_progress``); the test waits on the DOM (selenium's WebDriverWait) until
every agent's row shows 100 %, and that the origins' egress is shown. A screenshot of the page is kept under the
test's tmp_path, and copied to ``$KRAKEN_TEST_ARTEFACTS`` when that variable names a directory (CI uploads it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from kraken.cli.image import write_layout

from ._tools import SKOPEO_TIMEOUT, skopeo

pytestmark = pytest.mark.integration

AGENTS = 3
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
#: A backstop for the page reaching a state, not a measure: the pulls themselves take seconds.
PAGE_TIMEOUT = 120.0


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # Debian's chromium: selenium never downloads a browser or a driver
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1500,900")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def keep_artefact(path: str) -> None:
    """Copy ``path`` to ``$KRAKEN_TEST_ARTEFACTS`` (created if missing) when it is set."""
    where = os.environ.get("KRAKEN_TEST_ARTEFACTS")
    if where:
        os.makedirs(where, exist_ok=True)
        shutil.copy(path, os.path.join(where, os.path.basename(path)))


def agents_done(driver: Any) -> bool:
    cells = driver.find_elements(By.CSS_SELECTOR, "#peers tr[data-kind='agent'] td.progress")
    return len(cells) == AGENTS and all(c.get_attribute("data-progress") == "100" for c in cells)


def test_the_swarm_page_shows_three_agents_reach_100_percent(herd_launcher: Any, browser: Any, tmp_path: Any) -> None:
    herd = herd_launcher.start(
        str(tmp_path / "herd"), agents=AGENTS, extra={"agent": {"p2p": {"announce_progress": True}}}
    )
    layout = write_layout(str(tmp_path / "layout"), layers=1, random_layer_size="24MiB", seed=f"page-{uuid.uuid4()}")
    [layer] = layout.layers
    repo = f"integration/page-{uuid.uuid4().hex[:8]}"
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--preserve-digests",
        f"oci:{layout.path}:v1",
        f"docker://{herd.registry}/{repo}:v1",
    )

    browser.get(f"{herd.tracker_url}/swarms/{layer.digest}")
    WebDriverWait(browser, PAGE_TIMEOUT).until(lambda d: "no swarm of" in d.find_element(By.ID, "status").text)

    pulls = [
        subprocess.Popen(
            ["skopeo", "copy", "--src-tls-verify=false", f"docker://{herd.agent_registry(k)}/{repo}:v1",
             f"dir:{tmp_path / f'agent-{k}'}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for k in range(AGENTS)
    ]  # fmt: skip
    for k, pull in enumerate(pulls):
        _, err = pull.communicate(timeout=SKOPEO_TIMEOUT)
        assert pull.returncode == 0, f"pull from agent {k}: {err.decode(errors='replace')[-3000:]}"

    WebDriverWait(browser, PAGE_TIMEOUT).until(agents_done)
    WebDriverWait(browser, PAGE_TIMEOUT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#origins tbody tr"))
    shot = str(tmp_path / "swarm-page.png")
    assert browser.save_screenshot(shot)
    keep_artefact(shot)

    assert browser.find_element(By.ID, "key").text == str(layer.digest)
    assert browser.find_element(By.ID, "summary").text.startswith(f"{AGENTS} peers, {AGENTS} complete")
    assert browser.find_element(By.ID, "status").get_attribute("class") == ""  # no error shown
    agent_rows = browser.find_elements(By.CSS_SELECTOR, "#peers tr[data-kind='agent']")
    assert len({row.get_attribute("data-peer-id") for row in agent_rows}) == AGENTS
    # The index lists the swarm, linking to its page.
    browser.get(f"{herd.tracker_url}/swarms")
    link = f"#swarms tr[data-key='{layer.digest}'] a"
    WebDriverWait(browser, PAGE_TIMEOUT).until(lambda d: d.find_elements(By.CSS_SELECTOR, link))
    index_shot = str(tmp_path / "swarm-index.png")
    assert browser.save_screenshot(index_shot)
    keep_artefact(index_shot)
    browser.find_element(By.CSS_SELECTOR, link).click()
    WebDriverWait(browser, PAGE_TIMEOUT).until(agents_done)
    assert browser.find_element(By.ID, "key").text == str(layer.digest)
