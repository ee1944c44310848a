"""Who may push and pull at the proxy, and SIGHUP reloading its credentials, on a real kraken-herd (twistd).

- Access rules (HTTP Basic): alice may push ``team-a/*`` and pull everything, bob may only pull. skopeo
  pushes as alice and pulls as bob; bob's push fails in skopeo, the proxy answers bob 403 DENIED (asked
  directly), and nothing stored changes: the tag still names alice's image and none of bob's blobs exist.
- SIGHUP: the proxy verifies tokens with the keys read at start; after the key file is replaced, a SIGHUP
  to the twistd process makes the new key verify; a broken file on the next SIGHUP is refused in one log
  line naming it, and the keys already loaded still work.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
import uuid
from typing import Any

import bcrypt
import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kraken.cli.image import write_layout

from ._tools import SKOPEO_TIMEOUT, check_dir_copy, skopeo

PASSWORDS = {"alice": "alice's password", "bob": "bob's password"}
ACCESS = [
    {"users": ["alice"], "repositories": "team-a/*", "actions": ["pull", "push"]},
    {"users": ["alice", "bob"], "repositories": "*", "actions": ["pull"]},
]


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()}


def creds(user: str) -> str:
    return f"{user}:{PASSWORDS[user]}"


def tagged(url: str) -> str:
    """The digest of the manifest tagged v1 (as bob sees it)."""
    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
    r = requests.head(f"{url}/manifests/v1", headers={**basic("bob"), "Accept": accept}, timeout=30)
    assert r.status_code == 200, r.status_code
    return str(r.headers["Docker-Content-Digest"])


def test_alice_pushes_team_a_bob_only_pulls(herd_launcher: Any, tmp_path: Any) -> None:
    users = tmp_path / "htpasswd"
    users.write_text(
        "".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(5)).decode()}\n" for u, p in PASSWORDS.items())
    )
    auth = {"htpasswd": str(users), "access": ACCESS}
    herd = herd_launcher.start(str(tmp_path / "herd"), agents=1, extra={"proxy": {"auth": auth}})
    repo = f"team-a/app-{uuid.uuid4().hex[:6]}"
    ref = f"docker://{herd.registry}/{repo}:v1"
    ours = write_layout(str(tmp_path / "alice"), layers=2, seed=f"alice-{uuid.uuid4()}")
    theirs = write_layout(str(tmp_path / "bob"), layers=2, seed=f"bob-{uuid.uuid4()}")

    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds("alice"), f"oci:{ours.path}:v1", ref)
    skopeo("copy", "--src-tls-verify=false", "--src-creds", creds("bob"), ref, f"dir:{tmp_path / 'copy'}")
    assert len(check_dir_copy(str(tmp_path / "copy"))[1]) == 3
    url = f"{herd.url}/v2/{repo}"
    before = tagged(url)

    pushed = subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", creds("bob"), f"oci:{theirs.path}:v1", ref],
        capture_output=True,
        timeout=SKOPEO_TIMEOUT,
    )
    err = pushed.stderr.decode(errors="replace")
    assert pushed.returncode != 0, err
    assert "requested access to the resource is denied" in err, err

    r = requests.post(f"{url}/blobs/uploads/", headers=basic("bob"), timeout=30)
    assert r.status_code == 403, (r.status_code, r.text)
    assert "WWW-Authenticate" not in r.headers
    assert r.json()["errors"][0]["code"] == "DENIED"
    other = f"{herd.url}/v2/team-b/app/blobs/uploads/"
    assert requests.post(other, headers=basic("alice"), timeout=30).status_code == 403

    # Nothing stored changed: the tag names alice's manifest, bob's blobs are nowhere.
    assert tagged(url) == before
    assert requests.get(f"{url}/tags/list", headers=basic("bob"), timeout=30).json()["tags"] == ["v1"]
    for blob in (theirs.config, *theirs.layers):
        assert requests.head(f"{url}/blobs/{blob.digest}", headers=basic("alice"), timeout=30).status_code == 404


# -- SIGHUP -------------------------------------------------------------------

SERVICE, ISSUER = "kraken-sighup", "sighup-test-issuer"


def public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def base_status(registry: str, key: Any) -> int:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": SERVICE, "sub": "ci", "nbf": now, "exp": now + 300, "access": []}
    headers = {"Authorization": "Bearer " + jwt.encode(claims, key, algorithm="ES256")}
    return requests.get(f"http://{registry}/v2/", headers=headers, timeout=30).status_code


def sighup(herd: Any, line: str) -> list[str]:
    """SIGHUP the herd's twistd process and wait for its log ``line``; returns what it logged meanwhile."""
    start = herd.output.count()
    herd.process.send_signal(signal.SIGHUP)
    assert herd.wait_for_lines(lambda text: line in text, start), "\n".join(herd.output.snapshot(start))
    return herd.output.snapshot(start)


def test_sighup_reloads_the_token_keys(herd_launcher: Any, tmp_path: Any) -> None:
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    keys = tmp_path / "signer.pem"
    keys.write_bytes(public_pem(old))
    token = {"realm": "https://auth.invalid/token", "service": SERVICE, "issuer": ISSUER, "certificates": str(keys)}
    herd = herd_launcher.start(str(tmp_path / "herd"), agents=0, extra={"proxy": {"auth": {"token": token}}})
    assert (base_status(herd.registry, old), base_status(herd.registry, new)) == (200, 401)

    tmp = tmp_path / "signer.pem.new"
    tmp.write_bytes(public_pem(new))
    os.replace(tmp, keys)  # how a rotation writes it
    assert (base_status(herd.registry, old), base_status(herd.registry, new)) == (200, 401), "until SIGHUP"
    sighup(herd, "token keys reloaded from")
    assert (base_status(herd.registry, old), base_status(herd.registry, new)) == (401, 200)

    keys.write_text("-----BEGIN PUBLIC KEY-----\nbroken\n-----END PUBLIC KEY-----\n")
    logged = sighup(
        herd, f"token keys not reloaded, keeping the previous 1: {keys}: PEM block 1 is not a readable PUBLIC KEY"
    )
    assert any(str(keys) in line for line in logged if "not reloaded" in line), logged
    assert not any("Traceback" in line for line in logged), logged
    assert base_status(herd.registry, new) == 200
    assert herd.alive()
