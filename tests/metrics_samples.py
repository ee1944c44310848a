"""Reading ``/metrics`` in tests: the samples of a text-format body, parsed by prometheus_client's own parser."""

from __future__ import annotations

from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from results import result_of
from treq.testing import StubTreq
from twisted.internet.defer import Deferred

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse(body: bytes) -> Samples:
    """``(name, sorted labels) -> value`` of every sample in ``body``."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def scrape(stub: StubTreq, base: str = "http://daemon.test") -> Samples:
    """``GET /metrics`` through ``stub``: checked to be 200 in the text format, parsed."""

    async def go() -> tuple[int, Any, bytes]:
        response = await stub.get(base + "/metrics")
        return response.code, response.headers, await treq.content(response)

    code, headers, body = result_of(Deferred.fromCoroutine(go()), stub.flush)
    assert code == 200, body
    assert headers.getRawHeaders("content-type") == [CONTENT_TYPE]
    return parse(body)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample ``name`` with exactly ``labels``, or None."""
    return samples.get((name, tuple(sorted(labels.items()))))


def requests(samples: Samples, route: str, method: str, code: str) -> float:
    """``kraken_http_requests_total`` of one route, method and status class (0 when absent)."""
    return value(samples, "kraken_http_requests_total", route=route, method=method, code=code) or 0.0
