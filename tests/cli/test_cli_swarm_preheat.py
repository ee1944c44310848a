"""``kraken swarm`` and ``kraken preheat`` through the entry point (``python -m kraken.cli``) against real herds,
and against daemons that are down: a clear one-line error and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

import pytest
from test_cli_herd import closed_port, kraken

from kraken.cli.image import write_layout

pytestmark = pytest.mark.integration

TOKEN = "a-preheat-secret-of-some-length"


def push(herd: Any, tmp_path: Any, name: str) -> tuple[Any, str]:
    layout = write_layout(str(tmp_path / name), layers=1, random_layer_size="2MiB", seed=f"{name}-{uuid.uuid4()}")
    repo = f"cli/{name}-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{layout.path}:v1",
         f"docker://{herd.registry}/{repo}:v1"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return layout, repo


def test_swarm_shows_a_pulled_blob(herd_launcher: Any, tmp_path: Any) -> None:
    herd = herd_launcher.start(str(tmp_path / "herd"), agents=2, extra={"agent": {"p2p": {"announce_progress": True}}})
    layout, repo = push(herd, tmp_path, "swarm")
    [layer] = layout.layers
    for k in range(2):
        subprocess.run(
            ["skopeo", "copy", "--src-tls-verify=false", f"docker://{herd.agent_registry(k)}/{repo}:v1",
             f"dir:{tmp_path / f'pulled-{k}'}"],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip

    done = kraken("swarm", str(layer.digest), "--tracker", herd.tracker_url, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["digest"] == str(layer.digest) and doc["peer_count"] == 2 and doc["complete"] == 2
    assert [p["progress"] for p in doc["peers"]] == [100.0, 100.0]
    assert all(p["bytes_in"] == layer.size for p in doc["peers"])

    done = kraken("swarm", str(layer.digest), "--tracker", herd.tracker_url, "--once")
    assert done.returncode == 0, done.stderr
    assert "2 peers, 2 complete" in done.stdout and done.stdout.count("100.0 %") == 2
    assert "origins' egress" in done.stdout

    # The live view: two redraws, then it stops by itself.
    done = kraken("swarm", str(layer.digest), "--tracker", herd.tracker_url, "--interval", "0.2", "--updates", "2")
    assert done.returncode == 0, done.stderr
    assert "2 peers, 2 complete" in done.stdout

    unknown = "sha256:" + "0" * 64
    done = kraken("swarm", unknown, "--tracker", herd.tracker_url)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"kraken swarm: error: the tracker at {herd.tracker_url} answered 404: no swarm of {unknown} on this tracker"
    )


def test_preheat_queues_an_image_and_the_origin_fetches_it(herd_launcher: Any, tmp_path: Any) -> None:
    token_file = tmp_path / "preheat-token"
    token_file.write_text(TOKEN + "\n")
    herd = herd_launcher.start(
        str(tmp_path / "herd"), agents=1, extra={"proxy": {"preheat": {"token_file": str(token_file)}}}
    )
    layout, repo = push(herd, tmp_path, "preheat")

    refused = kraken("preheat", f"{repo}:v1", "--proxy", herd.url)
    assert refused.returncode == 1
    assert refused.stderr.startswith("kraken preheat: error: the proxy refused (401): the preheat token is required")
    assert "give --token-file" in refused.stderr

    start = len(herd.log_lines())
    done = kraken("preheat", f"{repo}:v1", "--proxy", herd.url, "--token-file", str(token_file))
    assert done.returncode == 0, done.stderr
    assert f"queued preheat of {repo}@{layout.manifest.digest}" in done.stdout
    finished = f"preheat of {repo}@{layout.manifest.digest} done"
    assert herd.wait_for_lines(lambda line: finished in line, start), "\n".join(herd.log_lines(start)[-40:])

    done = kraken("preheat", f"{repo}@{layout.manifest.digest}", "--proxy", herd.url, "--token-file", str(token_file),
                  "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "proxy": herd.url, "queued": [{"repository": repo, "digest": str(layout.manifest.digest)}]
    }  # fmt: skip

    done = kraken("preheat", f"{repo}:nope", "--proxy", herd.url, "--token-file", str(token_file))
    assert done.returncode == 1
    assert done.stderr.strip() == "kraken preheat: error: the proxy refused (404): no such tag"


def test_daemons_that_are_down_give_a_clear_error(tmp_path: Any) -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    done = kraken("swarm", "sha256:" + "a" * 64, "--tracker", down, "--once")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"kraken swarm: error: cannot reach the tracker at {down}: connection refused\n"
    done = kraken("preheat", "library/x:v1", "--proxy", down)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"kraken preheat: error: cannot reach the proxy at {down}: connection refused\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["swarm", "latest", "--tracker", "http://t"], "is not a digest"),
        (["preheat", "library/x", "--proxy", "http://p"], "names no tag"),
        (["preheat", "library/x@sha256:12", "--proxy", "http://p"], "is not a digest"),
        (["preheat", "Bad Name:v1", "--proxy", "http://p"], "is not a repository name"),
        (["preheat", "library/x:v1", "--proxy", "http://p", "--token-file", "/nonexistent"], "cannot read"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str) -> None:
    done = kraken(*argv)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
