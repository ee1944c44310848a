"""The proxy's config: defaults and the values it refuses."""

from pathlib import Path

import pytest
from twisted.python import usage

from kraken.proxy.config import ProxyConfig
from kraken.proxy.tap import Options

EXAMPLES = Path(__file__).resolve().parents[2] / "etc" / "kraken"


def parse(tmp_path, text):
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    options = Options()
    options.parseOptions(["--config", str(path)])
    return options["parsed"]


def test_defaults_without_a_file():
    options = Options()
    options.parseOptions([])
    assert options["parsed"] == ProxyConfig()
    assert options["parsed"].listen_http == "tcp:15000:interface=127.0.0.1"


def test_example_config_loads():
    options = Options()
    options.parseOptions(["--config", str(EXAMPLES / "proxy.yaml")])
    assert options["parsed"].uploads.root == "/var/lib/kraken/proxy/uploads"


@pytest.mark.parametrize(
    "text,where",
    [
        ("io_threads: 0\n", ": io_threads must be positive"),
        ("registry: {max_page: 0}\n", ": registry: max_page must be positive"),
        ("registry: {max_references: 0}\n", ": registry: max_references must be positive"),
        ("registry: {check_batch: 1001}\n", ": registry: check_batch must be from 1 to 1000"),
        ("registry: {check_concurrency: 0}\n", ": registry: check_concurrency must be positive"),
        ("uploads: {ttl: 0s}\n", ": uploads: ttl must be positive"),
        ("uploads: {tll: 1h}\n", ": uploads.tll: unknown key"),
        ("listen_http: 'tcp:nope'\n", ": listen_http: not a usable endpoint"),
        ("limits: {requests_per_second: -1}\n", ": limits: requests_per_second must be 0 (no limit) or more"),
        ("limits: {max_upload_sessions: -2}\n", ": limits: max_upload_sessions must be 0 (no limit) or more"),
        ("limits: {max_clients: 0}\n", ": limits: max_clients must be positive"),
        ("limits: {max_blob_size: lots}\n", ": limits.max_blob_size"),
    ],
)
def test_bad_values_are_usage_errors_naming_file_and_key(tmp_path, text, where):
    with pytest.raises(usage.UsageError) as e:
        parse(tmp_path, text)
    assert str(e.value).startswith(str(tmp_path / "proxy.yaml") + where)


def test_limits_block(tmp_path):
    text = (
        "limits:\n  max_blob_size: 20GiB\n  max_upload_sessions: 1000\n  max_upload_sessions_per_client: 100\n"
        "  requests_per_second: 50\n  request_burst: 200\n"
    )
    limits = parse(tmp_path, text).limits
    assert limits.max_blob_size == 20 << 30
    assert (limits.max_upload_sessions, limits.max_upload_sessions_per_client) == (1000, 100)
    assert (limits.requests_per_second, limits.request_burst, limits.max_clients) == (50.0, 200, 10000)
