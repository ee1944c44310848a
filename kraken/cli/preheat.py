"""``kraken preheat REPO:TAG|REPO@DIGEST --proxy URL``: ask the proxy to have the origins fetch an image now.

It calls the proxy's ``POST /registry/preheat`` (``kraken.proxy.preheat``) with ``{"repository", "tag"}`` or
``{"repository", "digest"}``, and ``Authorization: Bearer <secret>`` when ``--token-file`` names the proxy's
``preheat.token_file`` secret (its first line). The proxy resolves a tag, answers 202 with what it queued, and
the origins fetch every blob of the image in the background (the proxy logs ``preheat of ... done``). Exit
status: 0 queued, 1 refused or the proxy cannot be asked (a one-line message on stderr), 2 a usage error.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from typing import IO, Any

from kraken.cli.calls import CallFailed, answer_error, call
from kraken.core import Digest, DigestError
from kraken.registry.names import is_valid_name

PROG = "kraken preheat"


def parse_reference(ref: str) -> dict[str, str]:
    """``repo:tag`` or ``repo@sha256:...`` as the preheat request's body; ValueError saying what is off."""
    if "@" in ref:
        repository, _, digest = ref.partition("@")
        try:
            Digest.parse(digest)
        except (DigestError, ValueError):
            raise ValueError(f"{digest!r} is not a digest (sha256:<64 hex>)") from None
        fields = {"repository": repository, "digest": digest}
    else:
        repository, sep, tag = ref.rpartition(":")
        if not sep or "/" in tag or not tag:
            raise ValueError(f"{ref!r} names no tag: give REPO:TAG or REPO@DIGEST")
        fields = {"repository": repository, "tag": tag}
    if not is_valid_name(repository):
        raise ValueError(f"{repository!r} is not a repository name")
    return fields


def read_token(path: str) -> bytes:
    """The secret in ``path`` (its first line); ValueError naming the file."""
    try:
        with open(path, "rb") as f:
            secret = f.readline().strip()
    except OSError as e:
        raise ValueError(f"--token-file: cannot read {path}: {e.strerror}") from None
    if not secret:
        raise ValueError(f"--token-file: {path} is empty")
    return secret


async def preheat(reactor: Any, client: Any, args: Any, out: IO[str] = sys.stdout) -> int:
    """``kraken preheat`` on the reactor; the exit status."""
    from rich.console import Console
    from rich.markup import escape

    fields, token = args.fields, args.token
    headers = {b"Content-Type": [b"application/json"]}
    if token is not None:
        headers[b"Authorization"] = [b"Bearer " + token]
    url = f"{args.proxy.rstrip('/')}/registry/preheat"
    what = (
        f"{fields['repository']}:{fields['tag']}" if "tag" in fields else f"{fields['repository']}@{fields['digest']}"
    )
    err = Console(stderr=True, highlight=False)
    spinner = err.status(escape(f"asking {args.proxy} to preheat {what}")) if err.is_terminal else nullcontext()
    try:
        with spinner:
            code, body = await call(
                client, "POST", url, reactor, args.timeout, data=json.dumps(fields).encode(), headers=headers
            )
    except CallFailed as e:
        print(f"{PROG}: error: cannot reach the proxy at {args.proxy}: {e}", file=sys.stderr)
        return 1
    if code != 202:
        hint = " (give --token-file)" if code == 401 and token is None else ""
        print(f"{PROG}: error: the proxy refused ({code}): {answer_error(body, code)}{hint}", file=sys.stderr)
        return 1
    try:
        queued = json.loads(body)["queued"]
    except (ValueError, KeyError, TypeError):
        print(f"{PROG}: error: the proxy answered 202 with something else than a preheat answer", file=sys.stderr)
        return 1
    if args.json:
        json.dump({"proxy": args.proxy, "queued": queued}, out, indent=2)
        out.write("\n")
        return 0
    console = Console(file=out, highlight=False, width=None if out.isatty() else 200)
    for target in queued:
        name = f"{target.get('repository')}@{target.get('digest')}"
        console.print(f"[green]queued[/] preheat of {escape(name)}: the origins are fetching its blobs")
    return 0
