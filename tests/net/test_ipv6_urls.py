"""treq through ``make_http_client`` reaches ``http://[v6]:port/`` URLs (hyperlink's ``to_uri`` cannot)."""

from __future__ import annotations

from typing import Any

import pytest
from hyperlink import DecodedURL, EncodedURL
from twisted.internet.defer import Deferred
from twisted.web.iweb import IAgent
from zope.interface import implementer

from kraken.net.client import IPv6LiteralClient, _IPv6LiteralAgent, _stand_in


@implementer(IAgent)
class Recording:
    def __init__(self) -> None:
        self.uris: list[bytes] = []

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Deferred[Any]:
        self.uris.append(uri)
        return Deferred()  # never answers: only the URL matters here


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("http://[::1]:15002/blobs/x?ns=a", b"http://[::1]:15002/blobs/x?ns=a"),
        (b"https://[2001:DB8::5]:443/v2/", b"https://[2001:db8::5]:443/v2/"),
        (DecodedURL.from_text("http://[0:0::1]:1/a"), b"http://[::1]:1/a"),
        ("http://127.0.0.1:15002/x", b"http://127.0.0.1:15002/x"),
        ("http://origin-1:15002/x", b"http://origin-1:15002/x"),
    ],
)
def test_ipv6_literal_urls_reach_the_agent(url: Any, sent: bytes) -> None:
    recording = Recording()
    client = IPv6LiteralClient(_IPv6LiteralAgent(recording))
    client.get(url)
    assert recording.uris == [sent]


def test_urls_without_an_ipv6_literal_are_untouched() -> None:
    assert _stand_in("http://127.0.0.1:1/x") == "http://127.0.0.1:1/x"
    url = EncodedURL.from_text("http://origin-1:1/x")
    assert _stand_in(url) is url


def test_zone_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid IPv6 host"):
        _stand_in("http://[fe80::1%25eth0]:15002/x")
