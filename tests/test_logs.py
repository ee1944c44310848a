"""The JSON log format (kraken.logs): one object per event, the fixed keys first, then the event's fields."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogPublisher
from twisted.logger._legacy import publishToNewObserver
from twisted.python.log import textFromEventDict

from kraken.logs import event_document
from kraken.logs import json as json_observer


def logged(emit: object) -> list[dict[str, object]]:
    out = io.StringIO()
    publisher = LogPublisher(json_observer(out))
    emit(Logger(namespace="kraken.test", observer=publisher))  # type: ignore[operator]
    lines = out.getvalue().splitlines()
    return [json.loads(line) for line in lines]


def test_an_event_is_one_line_with_its_named_fields() -> None:
    [doc] = logged(lambda log: log.warn("blob {digest} gone\nreally", digest="sha256:ab", namespace="library/x",
                                        time=3, text="mine"))  # fmt: skip
    assert list(doc)[:4] == ["time", "level", "logger", "text"]
    assert doc["level"] == "warn" and doc["logger"] == "kraken.test"
    assert doc["text"] == "blob sha256:ab gone\nreally"
    assert doc["digest"] == "sha256:ab" and doc["namespace"] == "library/x"
    assert doc["time_"] == 3 and doc["text_"] == "mine"  # fields named like a fixed key keep their value
    assert str(doc["time"]).endswith("Z")


def test_a_failure_carries_its_traceback_and_odd_values_are_strings() -> None:
    def emit(log: Logger) -> None:
        try:
            raise ValueError("bad piece")
        except ValueError:
            log.failure("writing piece {piece} failed", piece=3, peer=object())

    [doc] = logged(emit)
    assert doc["level"] == "critical" and doc["piece"] == 3 and doc["text"] == "writing piece 3 failed"
    assert "ValueError: bad piece" in str(doc["traceback"]) and str(doc["peer"]).startswith("<object object")


def test_a_legacy_event_keeps_its_text_only() -> None:
    captured: list[dict[str, object]] = []
    legacy = {"message": ("Starting factory",), "isError": 0, "system": "-", "time": 1.5}
    publishToNewObserver(lambda event: captured.append(event_document(event)), legacy, textFromEventDict)
    [doc] = captured
    assert doc["text"] == "Starting factory" and doc["time"] == "1970-01-01T00:00:01.500Z"
    assert not {"message", "isError", "system", "time_"} & set(doc)


def test_an_event_json_cannot_hold_is_kept_with_its_fields_repr() -> None:
    out = io.StringIO()
    publisher = LogPublisher(json_observer(out))
    Logger(namespace="kraken.test", observer=publisher).warn("odd {counts}", counts={(1, 2): 3})
    [line] = out.getvalue().splitlines()
    doc = json.loads(line)
    assert (doc["level"], doc["logger"], doc["text"]) == ("warn", "kraken.test", "odd {(1, 2): 3}")
    assert "(1, 2): 3" in doc["unserialisable"]
