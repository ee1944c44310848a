"""What the ``kraken`` subcommands that call one daemon share: the call with a timeout, the error text of an
answer, and running a coroutine on the reactor for an exit status."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from kraken.cli.status import _why, fetch, http_client

#: The most of an answer read.
MAX_ANSWER = 16 << 20


class CallFailed(Exception):
    """The daemon could not be asked (its message is one short line: refused, timed out...)."""


async def call(
    client: Any,
    method: str,
    url: str,
    clock: IReactorTime,
    timeout: float,
    *,
    data: bytes | None = None,
    headers: Mapping[bytes, list[bytes]] | None = None,
) -> tuple[int, bytes]:
    """(status, body) of one request, given up after ``timeout`` seconds; ``CallFailed`` saying why it failed."""
    try:
        return await fetch(client, method, url, clock, timeout, MAX_ANSWER, data=data, headers=headers)
    except Exception as e:
        raise CallFailed(_why(e, timeout)) from None


def answer_error(body: bytes, code: int) -> str:
    """The message of an error answer: ``{"error": ...}``, an OCI ``{"errors": [...]}``, or the status."""
    try:
        doc = json.loads(body)
    except ValueError:
        return f"HTTP {code}"
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return doc["error"]
    if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
        messages = [str(e.get("message")) for e in doc["errors"] if isinstance(e, dict) and e.get("message")]
        if messages:
            return "; ".join(messages)
    return f"HTTP {code}"


def run_with_client(main: Callable[[Any, Any], Awaitable[int]], tls: Mapping[str, str], prog: str) -> int:
    """``main(reactor, client)`` on the reactor (``task.react``) with a treq client trusting ``tls`` (``ca``,
    ``cert``, ``key``: paths); its exit status (2 when ``tls`` names a file that cannot be used)."""
    from twisted.internet.task import react

    async def go(reactor: Any) -> int:
        try:
            client, pool = http_client(reactor, tls)
        except ValueError as e:
            raise SystemExit(f"tls: {e}") from None
        try:
            return await main(reactor, client)
        finally:
            await pool.closeCachedConnections()

    def start(reactor: Any) -> Deferred[None]:
        async def wrapped() -> None:
            raise SystemExit(await go(reactor))

        return Deferred.fromCoroutine(wrapped())

    code: object = 1
    try:
        react(start)
    except SystemExit as e:
        code = e.code
    if isinstance(code, str):
        print(f"{prog}: error: {code}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 1
