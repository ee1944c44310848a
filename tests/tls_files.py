"""Test certificates from trustme, written as the PEM files a ``tls:`` block names."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import trustme


def write_pair(directory: Path, ca: trustme.CA, name: str, *hosts: str, **issue: object) -> tuple[str, str]:
    """A certificate for ``hosts`` (default 127.0.0.1 and localhost) signed by ``ca``: (cert path, key path)."""
    os.makedirs(directory, exist_ok=True)
    leaf = ca.issue_cert(*(hosts or ("127.0.0.1", "localhost")), **issue)  # type: ignore[arg-type]
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def write_ca(directory: Path, ca: trustme.CA, name: str = "ca") -> str:
    os.makedirs(directory, exist_ok=True)
    path = directory / f"{name}.crt"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def expired() -> dict[str, object]:
    """``issue_cert`` keywords for a certificate that expired yesterday."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"not_before": now - datetime.timedelta(days=10), "not_after": now - datetime.timedelta(days=1)}
