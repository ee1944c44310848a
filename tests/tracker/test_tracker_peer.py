"""PeerInfo: validation and its JSON form."""

from __future__ import annotations

import pytest

from kraken.core.peer import PeerError, PeerInfo, is_peer_id


@pytest.mark.parametrize("peer_id", ["a" * 40, "0123456789" * 4, "f" * 64])
def test_peer_ids_of_20_or_32_bytes(peer_id: str) -> None:
    assert is_peer_id(peer_id)
    assert PeerInfo(peer_id, "10.0.0.1", 1).peer_id == peer_id


@pytest.mark.parametrize("peer_id", ["a" * 39, "a" * 41, "a" * 63, "A" * 40, "g" * 40, "", 12])
def test_bad_peer_ids(peer_id: object) -> None:
    with pytest.raises(PeerError, match="peer id"):
        PeerInfo(peer_id, "10.0.0.1", 1)  # type: ignore[arg-type]


def test_ip_is_normalised() -> None:
    assert PeerInfo("a" * 40, "2001:DB8::0:1", 1).ip == "2001:db8::1"
    assert PeerInfo("a" * 40, "192.168.0.1", 1).ip == "192.168.0.1"


@pytest.mark.parametrize("ip", ["example.com", "10.0.0", "", "1.2.3.4:5", 17])
def test_bad_ips(ip: object) -> None:
    with pytest.raises(PeerError):
        PeerInfo("a" * 40, ip, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("port", [0, 65536, -1, True, "80", 1.5])
def test_bad_ports(port: object) -> None:
    with pytest.raises(PeerError, match="port"):
        PeerInfo("a" * 40, "10.0.0.1", port)  # type: ignore[arg-type]


def test_flags_must_be_booleans() -> None:
    with pytest.raises(PeerError, match="complete"):
        PeerInfo("a" * 40, "10.0.0.1", 1, complete=1)  # type: ignore[arg-type]
    with pytest.raises(PeerError, match="origin"):
        PeerInfo("a" * 40, "10.0.0.1", 1, origin="yes")  # type: ignore[arg-type]


def test_json_round_trip() -> None:
    p = PeerInfo("b" * 64, "::1", 65535, complete=True, origin=True)
    assert p.to_json() == {"peer_id": "b" * 64, "ip": "::1", "port": 65535, "complete": True, "origin": True}
    assert PeerInfo.from_json(p.to_json()) == p


def test_from_json_is_strict() -> None:
    doc = PeerInfo("b" * 40, "10.0.0.1", 2).to_json()
    with pytest.raises(PeerError, match="exactly the keys"):
        PeerInfo.from_json({**doc, "zone": "x"})
    with pytest.raises(PeerError, match="exactly the keys"):
        PeerInfo.from_json({k: v for k, v in doc.items() if k != "origin"})
    with pytest.raises(PeerError, match="object"):
        PeerInfo.from_json([doc])
