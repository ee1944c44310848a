"""A herd with TLS on every link: mutual TLS between the daemons and on P2P, TLS on the registries.

skopeo pushes to the proxy and pulls from an agent over TLS, trusting the test CA (``--*-cert-dir`` with the CA as
``ca.crt``); an internal API refuses a client without a cluster certificate in the TLS handshake, and logs it.
"""

from __future__ import annotations

import os
import socket
import ssl
import uuid
from typing import Any

import pytest
import trustme
from tls_files import write_ca, write_pair

from kraken.cli.image import write_layout

from ._tools import check_dir_copy, skopeo


def tls_extra(tmp_path: Any, ports: Any) -> tuple[dict[str, Any], str]:
    """The herd's config for TLS everywhere, and the directory skopeo trusts (``ca.crt``)."""
    ca = trustme.CA()
    certs = tmp_path / "certs"
    ca_path = write_ca(certs, ca)
    cert, key = write_pair(certs, ca, "node")  # 127.0.0.1 and localhost: every daemon of this herd
    cluster = {"ca": ca_path, "cert": cert, "key": key, "client_ca": ca_path, "require_client_cert": True}
    public = {"ca": ca_path, "cert": cert, "key": key}  # the proxy: TLS, no client certificate
    url = "https://127.0.0.1:{}".format
    extra = {
        "origin": {"tls": cluster, "p2p": {"tls": True}},
        "tracker": {"tls": cluster, "origin": url(ports.origin)},
        "build_index": {"tls": cluster, "origin": url(ports.origin)},
        "proxy": {"tls": public, "origin": url(ports.origin), "build_index": url(ports.build_index)},
        "agent": {
            "tls": cluster,
            "tracker": url(ports.tracker),
            "build_index": url(ports.build_index),
            "p2p": {"tls": True},
        },
    }
    trusted = tmp_path / "trust"
    os.makedirs(trusted)
    write_ca(trusted, ca)
    return extra, str(trusted)


def test_push_and_pull_over_tls_with_mutual_tls_inside(herd_launcher: Any, tmp_path: Any) -> None:
    ports = herd_launcher.free_ports(1)
    extra, trust = tls_extra(tmp_path, ports)
    herd = herd_launcher.start(str(tmp_path / "herd"), ports, agents=1, extra=extra)
    layout = write_layout(str(tmp_path / "layout"), layers=1, random_layer_size="2MiB", seed=f"tls-{uuid.uuid4()}")
    repo = f"integration/tls-{uuid.uuid4().hex[:8]}"
    skopeo("copy", f"--dest-cert-dir={trust}", "--preserve-digests", f"oci:{layout.path}:v1",
           f"docker://{herd.registry}/{repo}:v1")  # fmt: skip
    skopeo("copy", f"--src-cert-dir={trust}", f"docker://{herd.agent_registry(0)}/{repo}:v1",
           f"dir:{tmp_path / 'pulled'}")  # fmt: skip
    manifest, blobs = check_dir_copy(str(tmp_path / "pulled"))
    assert manifest == layout.read_blob(layout.manifest.digest)
    assert blobs == {layout.config.digest, *(layer.digest for layer in layout.layers)}

    # The origin's API asks for a cluster certificate: a client trusting the CA but presenting none is refused.
    start = len(herd.log_lines())
    context = ssl.create_default_context(cafile=os.path.join(trust, "ca.crt"))
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        with socket.create_connection(("127.0.0.1", ports.origin), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                tls.recv(100)
    assert herd.wait_for_lines(lambda line: "TLS handshake with 127.0.0.1:" in line and "refused on origin" in line,
                               start)  # fmt: skip
