"""Listings and referrers through an agent of a real herd, compared with the proxy's answers.

skopeo pushes an image under two tags; python-dxf pushes an artifact's blobs and its manifest (with a ``subject``
and an ``artifactType``) goes up by a raw PUT. Then ``tags/list``, ``_catalog`` and ``referrers/<digest>`` (with
and without ``artifactType``, paginated with ``n``/``last``/``Link``, with containerd's ``?ns=``) are asked of the
agent's registry port and of the proxy: the answers are the same. skopeo list-tags through the agent too.
Synchronous: the herd is another process.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
import uuid
from typing import Any

from dxf import DXF

from kraken.cli.image import write_layout

from ._tools import skopeo

SBOM = "application/vnd.example.sbom"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()


def _listing(base: str, path: str) -> tuple[Any, str | None, str | None]:
    """The JSON of ``path``, its ``Link`` and its ``OCI-Filters-Applied``."""
    status, headers, body = _get(base + path)
    assert status == 200, (base, path, status)
    return json.loads(body), headers.get("link"), headers.get("oci-filters-applied")


def _push_artifact(herd: Any, repo: str, subject: str, subject_size: int, tmp_path: Any) -> str:
    """An SBOM artifact referring to ``subject``: blobs through python-dxf, the manifest by a raw PUT."""
    dxf = DXF(herd.registry, repo, insecure=True)
    blobs = []
    for name, data in (("empty", b"{}"), ("sbom", b'{"packages": ["musl"]}')):
        path = tmp_path / name
        path.write_bytes(data)
        blobs.append((dxf.push_blob(str(path)), len(data)))
    (config, config_size), (sbom, sbom_size) = blobs
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SBOM,
            "config": {"mediaType": OCI_EMPTY, "digest": config, "size": config_size},
            "layers": [{"mediaType": "application/json", "digest": sbom, "size": sbom_size}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_size},
        }
    ).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    put = urllib.request.Request(
        f"{herd.url}/v2/{repo}/manifests/{digest}", data=manifest, method="PUT", headers={"Content-Type": OCI_MANIFEST}
    )
    with urllib.request.urlopen(put, timeout=30) as response:
        assert response.status == 201
        assert response.headers["OCI-Subject"] == subject
    return digest


def test_listings_and_referrers_through_an_agent_are_the_proxys(herd: Any, tmp_path: Any) -> None:
    repo = f"integration/listings-{uuid.uuid4().hex[:8]}"
    layout = write_layout(str(tmp_path / "layout"), layers=1, random_layer_size="64KiB", seed=repo)
    for tag in ("v1", "v2"):
        skopeo("copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{layout.path}:v1",
               f"docker://{herd.registry}/{repo}:{tag}")  # fmt: skip
    subject = layout.manifest.digest
    artifact = _push_artifact(herd, repo, subject, layout.manifest.size, tmp_path)

    proxy, agent = herd.url, f"http://{herd.agent_registry(0)}"
    before = repo[:-1]  # a repository name sorting just before ours: the catalog page that starts with it
    paths = [
        f"/v2/{repo}/tags/list",
        f"/v2/{repo}/tags/list?n=1",
        f"/v2/{repo}/tags/list?n=1&last=v1",
        f"/v2/_catalog?n=1&last={before}",
        f"/v2/{repo}/referrers/{subject}",
        f"/v2/{repo}/referrers/{subject}?artifactType={SBOM}",
        f"/v2/{repo}/referrers/{subject}?artifactType=application/vnd.example.none",
    ]
    answers = {path: _listing(agent, path) for path in paths}
    assert answers == {path: _listing(proxy, path) for path in paths}

    assert answers[paths[0]] == ({"name": repo, "tags": ["v1", "v2"]}, None, None)
    assert answers[paths[1]] == (
        {"name": repo, "tags": ["v1"]}, f'</v2/{repo}/tags/list?n=1&last=v1>; rel="next"', None,
    )  # fmt: skip
    assert answers[paths[2]] == ({"name": repo, "tags": ["v2"]}, None, None)
    assert answers[paths[3]][0] == {"repositories": [repo]}
    referrers, _, filtered = answers[paths[5]]
    assert [(m["digest"], m["artifactType"]) for m in referrers["manifests"]] == [(artifact, SBOM)]
    assert filtered == "artifactType"
    assert answers[paths[4]][0] == referrers
    assert answers[paths[6]][0]["manifests"] == []

    # As a containerd mirror: with ?ns= the answer is the same, and the namespace is echoed.
    status, headers, body = _get(f"{agent}/v2/{repo}/referrers/{subject}?artifactType={SBOM}&ns=docker.io")
    assert (status, json.loads(body), headers.get("oci-namespace")) == (200, referrers, "docker.io")

    listed = skopeo("list-tags", "--tls-verify=false", f"docker://{herd.agent_registry(0)}/{repo}").stdout
    assert json.loads(listed)["Tags"] == ["v1", "v2"]
