"""Endpoint descriptions: addresses, URLs and validation."""

import attrs
import pytest

from kraken.net.endpoints import check_listen, endpoint_url, host_port, listen_description


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("tcp:15002:interface=10.0.0.5", "10.0.0.5:15002"),
        ("tcp:port=15002:interface=10.0.0.5", "10.0.0.5:15002"),
        (r"tcp6:15002:interface=\:\:1", "[::1]:15002"),
        (r"tcp:15002:interface=\:\:1", "[::1]:15002"),
        (r"tcp:15002:interface=0\:0\:\:1", "[::1]:15002"),
        (r"tcp:15002:interface=\:\:", "wild:15002"),
        ("ssl:443:privateKey=k.pem:interface=h.example", "h.example:443"),
        ("tcp:15002", "wild:15002"),
        ("tcp:15002:interface=0.0.0.0", "wild:15002"),
        ("unix:/run/origin.sock", None),
        ("systemd:domain=INET:index=0", None),
        ("tcp:noport", None),
    ],
)
def test_host_port(endpoint, expected):
    assert host_port(endpoint, "wild") == expected


def test_endpoint_url():
    assert endpoint_url("tcp:15002:interface=127.0.0.1") == "http://127.0.0.1:15002"
    assert endpoint_url("tcp:15000") == "http://127.0.0.1:15000"
    assert endpoint_url("ssl:443:privateKey=k.pem") == "https://127.0.0.1:443"
    with pytest.raises(ValueError):
        endpoint_url("unix:/run/x.sock")


@attrs.frozen
class Listens:
    listen_http: str = attrs.field(validator=check_listen)


@pytest.mark.parametrize("good", ["tcp:0", "tcp:15000:interface=127.0.0.1", "unix:/tmp/x.sock", "tcp6:80"])
def test_check_listen_accepts(good):
    Listens(good)


@pytest.mark.parametrize("bad", ["", "tcp:", "nonsense:1", "tcp:notaport"])
def test_check_listen_refuses(bad):
    with pytest.raises(ValueError, match="listen_http"):
        Listens(bad)


def test_ipv6_listeners():
    assert listen_description("::1", 15002) == r"tcp:15002:interface=\:\:1"
    assert listen_description("127.0.0.1", 15002) == "tcp:15002:interface=127.0.0.1"
    assert endpoint_url(listen_description("::1", 15002)) == "http://[::1]:15002"
    assert host_port(listen_description("2001:db8::5", 1), "x") == "[2001:db8::5]:1"


def test_check_listen_ipv6():
    Listens(r"tcp:15002:interface=\:\:1")
    Listens(r"tcp6:15002:interface=\:\:1")
    with pytest.raises(ValueError, match=r"escape the colons of an IPv6 interface: interface=\\:\\:1"):
        Listens("tcp:15002:interface=::1")
    with pytest.raises(ValueError, match="IPv6 zone ids are not supported"):
        Listens(r"tcp:15002:interface=fe80\:\:1%eth0")
