"""containerd pulls through a Kraken agent, configured the way a node is: a hosts.toml mirror file.

The image is named after a registry that does not exist (``kraken.invalid``); its hosts.toml sends containerd
to the agent first and to an unreachable ``server`` last, so the pull can only succeed through the agent.

- Secure herd (``kraken-herd --secure``): skopeo pushes through the proxy with the generated user; containerd
  pulls from the agent over HTTPS with the development CA as the host's ``ca``. Without ``ca`` the same pull
  fails on the certificate (x509) and stores nothing: the TLS is real. The agent's registry asks for no client
  certificate (it serves this host's runtime; ``Wiring.public_server``), so ``ca`` alone is enough; a host
  with a ``client`` pair pulls as well.
- Plain herd: the same pull from an ``http://`` host.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest_twisted

from kraken.cli.image import Layout, write_layout

from . import test_secure_herd
from ._tools import run_process
from .containerd import Containerd, MirrorHost, containerd_fixture, write_hosts  # noqa: F401 (a fixture)

secure_herd = test_secure_herd.secure_herd  # the fixture: ``kraken-herd --secure`` with one agent

REGISTRY = "kraken.invalid"  # the registry in the image's name: never resolves
UNREACHABLE = "127.0.0.1:1"  # hosts.toml's ``server``: nothing listens there


async def _skopeo(reactor: Any, *args: str) -> None:
    code, _out, err = await run_process(reactor, ["skopeo", *args])
    assert code == 0, f"skopeo {' '.join(args)} exited {code}:\n{err.decode(errors='replace')[-4000:]}"


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def _layout(tmp_path: Any, name: str) -> tuple[Layout, str]:
    layout = write_layout(str(tmp_path / "layout"), layers=2, random_layer_size="1MiB", seed=f"{name}-{uuid.uuid4()}")
    return layout, f"integration/{name}-{uuid.uuid4().hex[:8]}"


async def _pulled(daemon: Containerd, hosts_dir: str, image: str, layout: Layout) -> None:
    """``ctr images pull --hosts-dir`` succeeds and containerd holds the pushed manifest and all its blobs."""
    (await daemon.ctr("images", "pull", "--hosts-dir", hosts_dir, image)).check()
    assert await daemon.image_digest(image) == layout.manifest.digest
    blobs = {layout.manifest.digest, layout.config.digest, *(layer.digest for layer in layout.layers)}
    assert blobs <= await daemon.content_digests()


@pytest_twisted.ensureDeferred
async def test_containerd_pulls_from_the_agent_over_tls_with_the_hosts_toml_ca(
    secure_herd: test_secure_herd.SecureHerd,
    containerd: Containerd,
    reactor: Any,
    tmp_path: Any,
) -> None:
    secure = os.path.join(secure_herd.state_dir, "secure")
    creds = _read(os.path.join(secure, "credentials"))
    layout, repo = _layout(tmp_path, "containerd-tls")
    trust = os.path.join(secure, "trust")
    await _skopeo(reactor, "copy", f"--dest-cert-dir={trust}", f"--dest-creds={creds}", "--preserve-digests",
                  f"oci:{layout.path}:v1", f"docker://127.0.0.1:{secure_herd.proxy}/{repo}:v1")  # fmt: skip
    agent = f"https://127.0.0.1:{secure_herd.agent_registry}"
    image = f"{REGISTRY}/{repo}:v1"

    # Without the CA containerd refuses the agent's certificate; the unreachable server fails too: no image.
    no_ca = write_hosts(str(tmp_path / "no-ca"), REGISTRY, [MirrorHost(agent)], server=f"https://{UNREACHABLE}")
    refused = await containerd.ctr("images", "pull", "--hosts-dir", no_ca, image)
    assert refused.code != 0 and "x509: certificate signed by unknown authority" in refused.err, refused
    assert await containerd.image_digest(image) is None

    ca = os.path.join(trust, "ca.crt")
    hosts = write_hosts(
        str(tmp_path / "certs.d"), REGISTRY, [MirrorHost(agent, ca=ca)], server=f"https://{UNREACHABLE}"
    )
    await _pulled(containerd, hosts, image, layout)

    # A host with a client pair as well (the agent does not ask for one; containerd accepts the file and pulls).
    (await containerd.ctr("images", "rm", image)).check()
    pair = (os.path.join(secure, "certs", "agent-0.crt"), os.path.join(secure, "certs", "agent-0.key"))
    with_client = MirrorHost(agent, ca=ca, client=pair)
    client_hosts = write_hosts(str(tmp_path / "client"), REGISTRY, [with_client], server=f"https://{UNREACHABLE}")
    await _pulled(containerd, client_hosts, image, layout)


@pytest_twisted.ensureDeferred
async def test_containerd_pulls_from_a_plain_agent(
    herd_launcher: Any,
    containerd: Containerd,
    reactor: Any,
    tmp_path: Any,
) -> None:
    herd = herd_launcher.start(str(tmp_path / "herd"), agents=1)
    layout, repo = _layout(tmp_path, "containerd-plain")
    await _skopeo(reactor, "copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{layout.path}:v1",
                  f"docker://{herd.registry}/{repo}:v1")  # fmt: skip
    agent = MirrorHost(f"http://{herd.agent_registry(0)}")
    hosts = write_hosts(str(tmp_path / "certs.d"), REGISTRY, [agent], server=f"http://{UNREACHABLE}")
    await _pulled(containerd, hosts, f"{REGISTRY}/{repo}:v1", layout)
