"""Several members over real TLS listeners on loopback: each member is checked against its own host name."""

from __future__ import annotations

from typing import Any

import pytest_twisted
import trustme
from tls_files import write_ca, write_pair
from twisted.web.resource import Resource
from twisted.web.static import Data

from kraken.cluster.services import ServiceHosts, ServiceHostsConfig
from kraken.net import HTTPClientConfig, RetryPolicy, TLSConfig, TLSContexts, make_http_client
from kraken.net.server import listen_http, make_site, port_address
from kraken.net.service import ServiceClient

CONFIG = HTTPClientConfig(retries=0, timeout=10.0)


async def listening(reactor: Any, cert: tuple[str, str]) -> tuple[Any, int]:
    root = Resource()
    root.putChild(b"hello", Data(b"hi", "text/plain"))
    site = make_site(root, reactor=reactor, access_log=False)
    site.timeOut = None
    contexts = TLSContexts(TLSConfig(cert=cert[0], key=cert[1]))
    service = listen_http(
        "tcp:0:interface=127.0.0.1", site, reactor=reactor, component="test", tls=contexts.http_server()
    )
    service.startService()
    port = await service._waitingForPort
    return service, int(port_address(port).rsplit(":", 1)[1])


@pytest_twisted.ensureDeferred
async def test_each_member_is_checked_against_its_own_name(reactor: Any, tmp_path: Any) -> None:
    ca = trustme.CA()
    # One member's certificate names only localhost, the other's only 127.0.0.1; both listen on 127.0.0.1.
    only_name, port_a = await listening(reactor, write_pair(tmp_path / "a", ca, "a", "localhost"))
    only_ip, port_b = await listening(reactor, write_pair(tmp_path / "b", ca, "b", "127.0.0.1"))
    http, pool = make_http_client(reactor, CONFIG, tls=TLSContexts(TLSConfig(ca=write_ca(tmp_path, ca))))
    try:

        async def hello(base: str) -> str:
            client = ServiceClient(http=http, base=base, clock=reactor, config=CONFIG)
            _, body = await client._call("GET", f"{base}/hello", frozenset({200}))
            return base if body == b"hi" else "?"

        # Each at the name its certificate gives: both answer, through one TLS policy.
        right = (f"https://localhost:{port_a}", f"https://127.0.0.1:{port_b}")
        for base in right:
            assert await hello(base) == base

        # The first reached at an address its certificate does not name: refused, and the call fails over.
        wrong = (f"https://127.0.0.1:{port_a}", f"https://127.0.0.1:{port_b}")
        mixed = ServiceHosts(ServiceHostsConfig(hosts=wrong), clock=reactor, policy=RetryPolicy(1), kind="tracker")
        # A key for which the wrong one comes first (the order depends on the ports), then three more.
        first = b"key-0"
        while (await mixed.locations(first))[0] != wrong[0]:
            first += b"+"
        for key in (first, b"one", b"two", b"three"):
            assert await mixed.call("hello", key, hello) == wrong[1]
        assert mixed.health.is_down(wrong[0])
        assert not mixed.health.is_down(wrong[1])
    finally:
        await pool.pool.closeCachedConnections()
        await only_name.stopService()
        await only_ip.stopService()
