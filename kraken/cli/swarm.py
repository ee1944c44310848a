"""``kraken swarm KEY --tracker URL``: one swarm as the tracker sees it, in the terminal.

``KEY`` is the blob's digest (``sha256:<hex>``) or its info hash; the tracker's ``GET /swarms/<KEY>.json``
(``kraken.tracker.swarmview``) is asked every ``--interval`` seconds and drawn with rich's ``Live``: every
peer's progress, rates in and out, bytes, the peers it gets pieces from, and the origins' egress. ``--once``
draws it once; ``--json`` prints the tracker's document once (for scripts). Exit status: 0 (also when
interrupted), 1 when the tracker cannot be asked or knows no such swarm (a one-line message on stderr), 2 for a
usage error. In the live view, a tracker that stops answering after the first answer is shown in the view's
last line, and asked again at the next refresh.
"""

from __future__ import annotations

import json
import re
import sys
from typing import IO, Any

from twisted.internet.task import deferLater

from kraken.cli.calls import CallFailed, answer_error, call

KEY = re.compile(r"sha256:[0-9a-f]{64}\Z|sha512:[0-9a-f]{128}\Z|[0-9a-f]{64}\Z")
PROG = "kraken swarm"


class SwarmError(Exception):
    """The swarm could not be shown (tracker down, no such swarm); the message says why."""


def check_key(key: str) -> str:
    if not KEY.match(key):
        raise ValueError(f"{key!r} is not a digest (sha256:<64 hex>) or an info hash (64 hex)")
    return key


def size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    value, units = float(n), ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0
    while value >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    return f"{value:.0f} {units[i]}" if i == 0 else f"{value:.1f} {units[i]}"


def rate(n: Any) -> str:
    return "-" if not isinstance(n, (int, float)) else size(n) + "/s"


def bar(progress: Any, width: int = 20) -> str:
    if not isinstance(progress, (int, float)):
        return "not reported"
    full = round(width * progress / 100)
    return "#" * full + "." * (width - full) + f" {progress:5.1f} %"


def view(doc: dict[str, Any], note: str = "") -> Any:
    """The rich renderable of a swarm document (every peer-supplied value escaped)."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    peers = Table(title=escape(f"swarm {doc.get('digest') or doc.get('info_hash')}"), title_justify="left")
    for column in ("peer", "kind", "progress", "rate in", "rate out", "received", "sent", "gets pieces from", "seen"):
        peers.add_column(column, overflow="fold")
    for p in doc["peers"]:
        sources = "\n".join(
            f"{'origin' if s['origin'] else 'agent'} {s['peer_id'][:12]}: {size(s['bytes'])} ({rate(s['rate'])})"
            for s in p.get("sources", [])
        )
        kind = p["kind"] + (" (complete)" if p["complete"] else "")
        cells = [p["peer_id"][:12], kind, bar(p["progress"]), rate(p.get("rate_in")), rate(p.get("rate_out")),
                 size(p.get("bytes_in")), size(p.get("bytes_out")), sources, f"{p['age']:.1f} s ago"]  # fmt: skip
        peers.add_row(*(escape(str(c)) for c in cells))
    origins = Table(title="origins' egress", title_justify="left")
    for column in ("origin", "sent", "rate"):
        origins.add_column(column)
    for o in doc["origins"]:
        origins.add_row(escape(o["peer_id"][:12]), size(o["bytes_out"]), rate(o["rate_out"]))
    summary = (
        f"{doc['peer_count']} peers, {doc['complete']} complete; in {rate(doc['rate_in'])}, out {rate(doc['rate_out'])}"
    )
    return Group(peers, origins, escape(summary + (f"  ({note})" if note else "")))


async def fetch(client: Any, reactor: Any, tracker: str, key: str, timeout: float) -> dict[str, Any]:
    """The tracker's document of the swarm; ``SwarmError`` saying why not."""
    url = f"{tracker.rstrip('/')}/swarms/{key}.json"
    try:
        code, body = await call(client, "GET", url, reactor, timeout)
    except CallFailed as e:
        raise SwarmError(f"cannot reach the tracker at {tracker}: {e}") from None
    if code != 200:
        raise SwarmError(f"the tracker at {tracker} answered {code}: {answer_error(body, code)}")
    try:
        doc = json.loads(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("peers"), list):
            raise ValueError("not a swarm document")
    except ValueError as e:
        raise SwarmError(f"the tracker at {tracker} answered something else than a swarm: {e}") from None
    return doc


async def show(reactor: Any, client: Any, args: Any, out: IO[str] = sys.stdout) -> int:
    """``kraken swarm`` on the reactor; the exit status."""
    from rich.console import Console

    try:
        doc = await fetch(client, reactor, args.tracker, args.key, args.timeout)
    except SwarmError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    console = Console(file=out, width=None if out.isatty() else 160, highlight=False)
    if args.json:
        json.dump(doc, out, indent=2)
        out.write("\n")
        return 0
    if args.once:
        console.print(view(doc))
        return 0
    return await live(reactor, client, args, console, doc)


async def live(reactor: Any, client: Any, args: Any, console: Any, doc: dict[str, Any]) -> int:
    """Redraw every ``args.interval`` seconds (``args.updates`` times, or until interrupted)."""
    from rich.live import Live

    updates = 0
    with Live(view(doc), console=console, auto_refresh=False) as screen:
        while args.updates is None or updates < args.updates:
            await deferLater(reactor, args.interval, lambda: None)
            updates += 1
            try:
                doc = await fetch(client, reactor, args.tracker, args.key, args.timeout)
                screen.update(view(doc), refresh=True)
            except SwarmError as e:
                screen.update(view(doc, note=f"not updated: {e}"), refresh=True)
    return 0
