"""The ``kraken`` command's entry point ``kraken.cli.main.main(argv)``: subcommands, arguments, cluster files,
usage errors (exit status 2, one line on stderr)."""

from __future__ import annotations

import json
import os

import pytest

from kraken.cli import main as cli
from kraken.cli.status import ClusterFileError, Target, load_cluster


def parse_status(*argv: str):
    return cli.status_inputs(cli.build_parser().parse_args(["status", *argv]))


def test_status_flags_name_the_daemons_in_kind_order():
    targets, tls = parse_status("--tracker", "http://t:3/", "--origin", "http://o1:1", "--origin", "http://o2:1")
    assert targets == [
        Target("origin", "http://o1:1"),
        Target("origin", "http://o2:1"),
        Target("tracker", "http://t:3"),
    ]
    assert tls == {}


def test_cluster_file_and_tls_flags(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "origin: [https://o1:1, https://o2:1]\nbuild_index: https://bi:2\nagent: [http://a:5]\n"
        "tls: {ca: /ca.crt, cert: /c.crt, key: /c.key}\n"
    )
    targets, tls = parse_status("--config", str(path), "--proxy", "https://p:4", "--ca", "/other.crt")
    assert [t.kind for t in targets] == ["origin", "origin", "build_index", "agent", "proxy"]
    assert tls == {"ca": "/other.crt", "cert": "/c.crt", "key": "/c.key"}


#: (cluster file, what its error says after the file's path)
BAD_FILES = [
    ("origins: [http://o:1]\n", "key origins: unknown"),
    ("origin: 5\n", "key origin: a URL or a list of URLs"),
    ("origin: [o:1]\n", "key origin: 'o:1' is not an http:// or https:// URL"),
    ("tls: {ca: 1}\n", "key tls:"),
    ("- just a list\n", "a mapping of daemon kinds"),
    ("origin: [\n", "cannot be read"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_bad_cluster_files_name_file_and_key(tmp_path, text, message):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ClusterFileError) as e:
        load_cluster(str(path))
    assert str(e.value).startswith(str(path)) and message in str(e.value)


def test_usage_errors_exit_2(tmp_path, capsys):
    assert cli.main(["status"]) == 2
    assert "no daemon to ask" in capsys.readouterr().err
    assert cli.main(["status", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kraken status: error: ") and "missing.yaml" in err and "\n" == err[-1]
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["status", "--origin"])
    assert e.value.code == 2


def test_certs_makes_a_development_ca(tmp_path, capsys):
    assert cli.main(["certs", str(tmp_path / "ca"), "origin", "--host", "kraken.example"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["made"] == ["ca", "origin"]
    assert os.path.exists(doc["ca"]) and all(os.path.exists(p) for p in doc["certificates"]["origin"])
    assert cli.main(["certs", str(tmp_path / "ca"), "origin", "--host", "kraken.example"]) == 0
    assert json.loads(capsys.readouterr().out)["made"] == []


def test_certs_default_names_and_a_bad_host(tmp_path, capsys):
    assert cli.main(["certs", str(tmp_path / "ca")]) == 0
    assert sorted(json.loads(capsys.readouterr().out)["certificates"]) == sorted(cli.DEFAULT_NAMES)
    assert cli.main(["certs", str(tmp_path / "ca"), "--host", "not a host"]) == 2
    assert "kraken certs: error: 'not a host' is not a host name" in capsys.readouterr().err


def test_image_is_the_layout_writer(tmp_path, capsys):
    assert (
        cli.main(["image", str(tmp_path / "img"), "--tag", "v2", "--layers", "1", "--random-layer-size", "1KiB"]) == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["tag"] == "v2" and os.path.exists(tmp_path / "img" / "index.json")
    assert cli.main(["image", str(tmp_path / "bad"), "--random-layer-size", "lots"]) == 2
    assert capsys.readouterr().err.startswith("kraken image: error: ")


def test_the_console_script_is_main():
    import configparser

    setup = configparser.ConfigParser()
    setup.read(os.path.join(os.path.dirname(__file__), "..", "..", "setup.cfg"))
    scripts = dict(line.split(" = ") for line in setup["options.entry_points"]["console_scripts"].strip().splitlines())
    assert scripts == {"kraken": "kraken.cli.main:main"}
    assert "rich >= 13.0" in setup["options"]["install_requires"]
