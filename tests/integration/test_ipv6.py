"""The whole herd on IPv6 loopback: skopeo pushes to the proxy, three agents pull at once, all over ::1.

skopeo (1.9, containers/image) refuses an IPv6 literal in an image reference (``docker://[::1]:5000/x`` is
"invalid reference format"; containers/image issue 1004), so it reaches the herd by a name that resolves to
::1 only: each skopeo runs in its own user and mount namespace (``unshare``) with a private ``/etc/hosts``
holding just ``::1 kraken-v6.test``. python-dxf (requests) then reads the image from an agent by its literal
``[::1]:port``.

The herd runs with ``host: "::1"`` (so the agents' listeners, advertised addresses and URLs come from the
herd's own defaults) and its other listeners given as ``tcp:PORT:interface=\\:\\:1``. Every listener logs the
address it bound: all of them are ``[::1]:PORT``, so the process has no IPv4 socket to listen on and every
connection, HTTP or P2P, went over IPv6. The agents' connection lines name their peers by IPv6 address, and
their counters show the pieces came from the origin and from each other.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import uuid
from typing import Any

from dxf import DXF

from kraken.cli.image import write_layout

from ._tools import SKOPEO_TIMEOUT, check_dir_copy, get_json

AGENTS = 3
V6 = "interface=\\:\\:1"
NAME = "kraken-v6.test"


def skopeo_v6(hosts: str, *args: str) -> subprocess.Popen[bytes]:
    """skopeo with ``hosts`` as its /etc/hosts (a private mount in a namespace of its own)."""
    script = 'mount --bind "$0" /etc/hosts && exec skopeo "$@"'
    argv = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, hosts, *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen[bytes], what: str) -> None:
    _, err = process.communicate(timeout=SKOPEO_TIMEOUT)
    assert process.returncode == 0, f"{what}: {err.decode(errors='replace')[-3000:]}"


def test_push_and_three_agent_pull_over_ipv6(herd_launcher: Any, tmp_path: Any) -> None:
    ports = herd_launcher.free_ports(AGENTS)
    extra = {
        "host": "::1",
        "proxy": {"listen_http": f"tcp:{ports.proxy}:{V6}"},
        "origin": {"listen_http": f"tcp:{ports.origin}:{V6}", "p2p": {"listen": f"tcp:{ports.origin_p2p}:{V6}"}},
        "tracker": {"listen_http": f"tcp:{ports.tracker}:{V6}"},
        "build_index": {"listen_http": f"tcp:{ports.build_index}:{V6}"},
    }
    herd = herd_launcher.start(str(tmp_path / "herd"), ports, agents=AGENTS, extra=extra)
    herd = dataclasses.replace(herd, host="[::1]")  # its URLs and registry references, bracketed

    # Every listener is on [::1]: the origin's HTTP and P2P, tracker, build-index, proxy, and per agent its
    # registry, P2P and API.
    listening = [line for line in herd.log_lines() if " listening on " in line]
    addresses = [re.search(r" listening on (\S+) ", line) for line in listening]
    assert len(listening) == 5 + 3 * AGENTS, listening
    assert all(a is not None and a.group(1).startswith("[::1]:") for a in addresses), listening

    hosts = tmp_path / "hosts"
    hosts.write_text(f"::1 {NAME}\n")
    layout = write_layout(str(tmp_path / "layout"), layers=2, random_layer_size="8MiB", seed=f"v6-{uuid.uuid4()}")
    repo = f"integration/ipv6-{uuid.uuid4().hex[:8]}"
    push = skopeo_v6(
        str(hosts), "copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{layout.path}:v1",
        f"docker://{NAME}:{ports.proxy}/{repo}:v1",
    )  # fmt: skip
    finish(push, "push to the proxy")
    log_start = herd.output.count()

    pulls = [
        skopeo_v6(
            str(hosts), "copy", "--src-tls-verify=false", f"docker://{NAME}:{ports.agent(k)[0]}/{repo}:v1",
            f"dir:{tmp_path / f'agent-{k}'}",
        )
        for k in range(AGENTS)
    ]  # fmt: skip
    for k, pull in enumerate(pulls):
        finish(pull, f"pull from agent {k}")

    manifest = layout.read_blob(layout.manifest.digest)
    image = (manifest, {layout.config.digest, *(layer.digest for layer in layout.layers)})
    assert [check_dir_copy(str(tmp_path / f"agent-{k}")) for k in range(AGENTS)] == [image] * AGENTS

    # The pieces came over P2P, from the origin and between the agents ...
    stats = [get_json(f"{herd.agent_api(k)}/stats") for k in range(AGENTS)]
    total = sum(blob.size for blob in (layout.manifest, layout.config, *layout.layers))
    assert all(s["bytes_in"] == total for s in stats), stats
    assert sum(s["pieces_in_from_origins"] for s in stats) > 0, stats
    # ... and every P2P connection named its peer by its IPv6 address.
    connected = [line for line in herd.log_lines(log_start) if "connected to peer " in line]
    peers = {m.group(1) for line in connected if (m := re.search(r" at (\S+) for ", line))}
    assert connected and peers == {"::1"}, connected[:20]

    # A client that takes an IPv6 literal: the manifest again, from an agent at [::1]:port.
    assert herd.agent_registry(0).startswith("[::1]:")
    dxf = DXF(herd.agent_registry(0), repo, insecure=True)
    assert dxf.get_manifest("v1").encode() == manifest
