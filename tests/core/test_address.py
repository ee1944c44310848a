"""host:port text with IPv6 literals: brackets required, zone ids refused, one written form."""

import pytest

from kraken.core.address import canonical_host, check_ip, is_ipv6, join_host_port, split_host_port
from kraken.core.peer import PeerError, PeerInfo

PEER_ID = "ab" * 20


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10.0.0.5:15002", ("10.0.0.5", 15002)),
        ("origin-1:15002", ("origin-1", 15002)),
        ("[::1]:15002", ("::1", 15002)),
        ("[2001:db8::5]:1", ("2001:db8::5", 1)),
        ("[::ffff:10.0.0.5]:65535", ("::ffff:10.0.0.5", 65535)),
    ],
)
def test_split_and_join(text: str, parsed: tuple[str, int]) -> None:
    assert split_host_port(text) == parsed
    assert join_host_port(*parsed) == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("::1:15002", "needs brackets"),
        ("2001:db8::5:80", "needs brackets"),
        ("[fe80::1%eth0]:15002", "zone ids ('%eth0') are not supported"),
        ("[origin-1]:15002", "only an IPv6 address goes in brackets"),
        ("[10.0.0.5]:15002", "only an IPv6 address goes in brackets"),
        ("[::1]", "needs its port after the brackets"),
        ("[::1]:", "must be 'host:port'"),
        ("[::1]:0", "must be 'host:port'"),
        ("[::1]:65536", "must be 'host:port'"),
        ("host%x:1", "not a host name or address"),
        ("a b:1", "not a host name or address"),
    ],
)
def test_split_refuses(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=f".*{why.replace('(', '.').replace(')', '.')}"):
        split_host_port(text)


def test_split_refuses_what_is_not_text() -> None:
    with pytest.raises(ValueError, match="must be 'host:port' text"):
        split_host_port(15002)


def test_check_ip() -> None:
    assert check_ip("::FFFF:1.2.3.4") == check_ip("::ffff:1.2.3.4")
    assert check_ip("0:0::1") == "::1"
    assert check_ip("10.0.0.5") == "10.0.0.5"
    with pytest.raises(ValueError, match=r"zone ids \('%lo'\) are not supported"):
        check_ip("fe80::1%lo")
    with pytest.raises(ValueError, match="not an IP address"):
        check_ip("[::1]")
    with pytest.raises(ValueError, match="must be text"):
        check_ip(None)


def test_canonical_host_and_is_ipv6() -> None:
    assert canonical_host("0:0:0:0:0:0:0:1") == "::1"
    assert canonical_host("2001:DB8::A") == "2001:db8::a"
    assert canonical_host("Origin-1") == "Origin-1"  # names and IPv4 as given
    assert canonical_host("10.0.0.5") == "10.0.0.5"
    assert is_ipv6("::1") and not is_ipv6("127.0.0.1") and not is_ipv6("[::1]") and not is_ipv6("host")


def test_peer_info_ipv6() -> None:
    peer = PeerInfo(PEER_ID, "0:0::1", 16001)
    assert peer.ip == "::1"
    assert peer.address == "[::1]:16001"
    assert PeerInfo(PEER_ID, "10.0.0.7", 16001).address == "10.0.0.7:16001"
    with pytest.raises(PeerError, match="zone ids"):
        PeerInfo(PEER_ID, "fe80::1%eth0", 16001)
