"""The benchmarks' TLS options: the config each writes (files that the daemons' own config classes accept),
the bench's certificates, and skopeo's options."""

from __future__ import annotations

import os

import bcrypt
import push_pull
import tracker_load
import yaml
from _daemons import BenchTLS

from kraken.net.tls import TLSConfig
from kraken.proxy.config import AuthConfig


def test_bench_tls_makes_a_dev_ca_a_cert_and_an_htpasswd(tmp_path):
    tls = BenchTLS.make(str(tmp_path))
    assert os.path.dirname(tls.ca) == tls.trust_dir
    TLSConfig(ca=tls.ca, cert=tls.cert, key=tls.key, client_ca=tls.ca, require_client_cert=True)  # checks the files
    user, password = tls.credentials
    line = open(tls.htpasswd).read().strip()
    assert line.startswith(f"{user}:")
    assert bcrypt.checkpw(password.encode(), line.split(":", 1)[1].encode())
    AuthConfig(htpasswd=tls.htpasswd)
    context = tls.context()
    assert context.verify_mode.name == "CERT_REQUIRED"


def test_tls_block_is_a_tls_config(tmp_path):
    tls = BenchTLS.make(str(tmp_path))
    mutual = yaml.safe_load(f"tls: {tls.block()}")["tls"]
    assert mutual == {"ca": tls.ca, "cert": tls.cert, "key": tls.key, "client_ca": tls.ca,
                      "require_client_cert": True}  # fmt: skip
    TLSConfig(**mutual)
    assert yaml.safe_load(f"tls: {tls.block(mutual=False)}")["tls"] == {"ca": tls.ca, "cert": tls.cert, "key": tls.key}


def test_push_pull_plain_configs_have_no_tls(tmp_path):
    ports = {"proxy": 1, "origin": 2, "build_index": 3}
    configs = {name: yaml.safe_load(text) for name, text in push_pull.ours_configs(str(tmp_path), ports).items()}
    assert all("tls" not in c and "auth" not in c for c in configs.values())
    assert configs["proxy"]["origin"] == "http://127.0.0.1:2"
    assert push_pull.skopeo_options(None) == (["--dest-tls-verify=false"], ["--src-tls-verify=false"])


def test_push_pull_secure_configs(tmp_path):
    tls = BenchTLS.make(str(tmp_path))
    ports = {"proxy": 1, "origin": 2, "build_index": 3}
    configs = {name: yaml.safe_load(text) for name, text in push_pull.ours_configs(str(tmp_path), ports, tls).items()}
    assert configs["origin"]["tls"]["require_client_cert"] is True
    assert configs["build-index"]["tls"]["client_ca"] == tls.ca
    assert configs["build-index"]["origin"] == "https://127.0.0.1:2"
    assert configs["proxy"]["origin"] == "https://127.0.0.1:2"
    assert configs["proxy"]["build_index"] == "https://127.0.0.1:3"
    assert "client_ca" not in configs["proxy"]["tls"]  # skopeo presents no certificate: Basic auth instead
    assert configs["proxy"]["auth"] == {"htpasswd": tls.htpasswd}
    push, pull = push_pull.skopeo_options(tls)
    creds = ":".join(tls.credentials)
    assert push == [f"--dest-creds={creds}", f"--dest-cert-dir={tls.trust_dir}"]
    assert pull == [f"--src-creds={creds}", f"--src-cert-dir={tls.trust_dir}"]


def test_tracker_load_configs(tmp_path):
    plain = [yaml.safe_load(open(p)) for p in tracker_load.bench_configs(str(tmp_path), 1, 2, 3, None)]
    assert all("tls" not in c for c in plain)
    assert plain[1]["origin"] == "http://127.0.0.1:1"
    tls = BenchTLS.make(str(tmp_path))
    origin, tracker = (yaml.safe_load(open(p)) for p in tracker_load.bench_configs(str(tmp_path), 1, 2, 3, tls))
    assert origin["tls"]["require_client_cert"] and tracker["tls"]["require_client_cert"]
    assert tracker["origin"] == "https://127.0.0.1:1"


def test_tracker_load_ratio_table():
    def result(requests):
        return tracker_load.Result(requests=requests, seconds=1.0, non_200=0, socket_errors=0, p50=0, p90=0, p99=0,
                                   max=0)  # fmt: skip

    rows = tracker_load.tls_ratio({100: [result(8000), result(9000)]}, {100: [result(6000), result(7000)]})
    assert rows[-1] == "| 100 | 8,500 | 6,500 | 0.76x |"


def test_swarm_tls_comparison():
    import _swarm

    rows = _swarm.tls_comparison({25: 40.0}, {25: 42.0})
    assert rows[-1] == "| 25 | 40.00 s | 42.00 s | 1.05x |"
    assert _swarm.MODES["both"] == (False, True)
