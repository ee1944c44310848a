"""An OCI artifact through an agent with the oras Python SDK (a real client, oras-py): pushed to the proxy with a
``subject`` (an image skopeo pushed), then, through the agent's registry, its repository's tags listed, the
artifact pulled back, and the subject's referrers listed (with the SDK's own HTTP session: oras-py has no referrers
call). Synchronous: the herd is another process.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from oras.oci import Subject
from oras.provider import Registry

from ._tools import push_new_image

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SBOM = "application/vnd.example.sbom+json"


def test_an_artifact_with_a_subject_through_an_agent_with_oras(herd: Any, tmp_path: Path) -> None:
    layout, repo = push_new_image(herd.registry, str(tmp_path / "layout"), "oras", layers=1, layer_size="64KiB")
    subject = layout.manifest.digest
    sbom = tmp_path / "sbom.json"
    sbom.write_bytes(b'{"packages": ["musl", "busybox"]}')

    proxy = Registry(hostname=herd.registry, insecure=True)
    pushed = proxy.push(
        target=f"{herd.registry}/{repo}:sbom",
        files=[f"{sbom}:{SBOM}"],
        subject=Subject(OCI_MANIFEST, subject, layout.manifest.size),
        disable_path_validation=True,
        quiet=True,
    )
    assert pushed.status_code == 201
    artifact = pushed.headers["Docker-Content-Digest"]

    agent = Registry(hostname=herd.agent_registry(0), insecure=True)
    assert sorted(agent.get_tags(f"{herd.agent_registry(0)}/{repo}")) == ["sbom", "v1"]
    [pulled] = agent.pull(target=f"{herd.agent_registry(0)}/{repo}:sbom", outdir=str(tmp_path / "pulled"))
    assert hashlib.sha256(Path(pulled).read_bytes()).digest() == hashlib.sha256(sbom.read_bytes()).digest()

    listed = agent.do_request(f"http://{herd.agent_registry(0)}/v2/{repo}/referrers/{subject}")
    assert listed.status_code == 200
    assert [m["digest"] for m in listed.json()["manifests"]] == [artifact]
