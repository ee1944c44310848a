"""The JSON log format for log shippers: one JSON object per line, with the event's named fields.

Every daemon (and the herd) takes it from twistd's own ``--logger`` option, given before the daemon's name::

    twistd -n --pidfile= --logger kraken.logs.json kraken-origin --config /etc/kraken/origin.yaml

twistd calls ``json()`` when logging begins and sends every event to the observer it returns, which
writes to standard output (the journal under systemd, the container's log under Kubernetes). A line::

    {"time": "2026-12-07T14:30:00.123Z", "level": "info", "logger": "kraken.origin.node.OriginNode",
     "text": "blob sha256:ab... committed (1024 bytes, new=True)", "digest": "sha256:ab...", "bytes": 1024,
     "created": true, "replica": 0, "namespace": "library/alpine"}

``time`` (UTC, milliseconds), ``level``, ``logger`` (the event's log namespace) and ``text`` (the
message as the text format would show it) come first; then each field the event was logged with, under
its own name (a field named like one of those four gets a trailing ``_``). A failure logged with
``log.failure`` adds ``traceback``. A value JSON has no type for is written as its ``str()``. Without
``--logger``, twistd's text format is unchanged.
"""

from __future__ import annotations

import json as _json
import sys
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent

#: The keys of every line, in this order; fields of these names are renamed with a trailing ``_``.
FIXED = ("time", "level", "logger", "text")
#: Keys of a legacy (``twisted.python.log``) event that repeat what ``text`` already says.
LEGACY = frozenset({"message", "format", "isError", "system", "time", "why", "failure"})


def json(out: IO[str] | None = None) -> ILogObserver:
    """The observer writing ``out`` (standard output by default) one JSON object per event."""
    return FileLogObserver(out if out is not None else sys.stdout, event_line)


def event_line(event: LogEvent) -> str:
    """``event`` as one line of JSON (with its newline); an event whose fields JSON cannot hold (a dict with
    keys that are not text, say) keeps its fixed keys and its fields' ``repr`` rather than being lost."""
    doc = event_document(event)
    try:
        return _json.dumps(doc, default=str, ensure_ascii=False, separators=(", ", ": ")) + "\n"
    except (TypeError, ValueError):
        fixed = {key: doc[key] for key in FIXED}
        fixed["unserialisable"] = repr({k: v for k, v in doc.items() if k not in FIXED})
        return _json.dumps(fixed, default=str, ensure_ascii=True, separators=(", ", ": ")) + "\n"


def event_document(event: LogEvent) -> dict[str, Any]:
    """The object of one event: the fixed keys, then its named fields, then ``traceback`` for a failure."""
    level = event.get("log_level")
    when = event.get("log_time")
    doc: dict[str, Any] = {
        "time": None if when is None else _iso(when),
        "level": getattr(level, "name", "info"),
        "logger": event.get("log_namespace", "-"),
        "text": _text(event),
    }
    legacy = "isError" in event and "message" in event  # from twisted.python.log (an access log line, say)
    for key, value in event.items():
        if key.startswith("log_") or (legacy and key in LEGACY):
            continue
        doc[f"{key}_" if key in FIXED else key] = value
    failure = event.get("log_failure")
    if failure is not None:
        doc["traceback"] = failure.getTraceback()
    return doc


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(event: LogEvent) -> str:
    text = formatEvent(event)
    if not text and "log_failure" in event:
        return str(event["log_failure"].getErrorMessage())
    return text
