"""YAML configuration: ``extends:``, deep merge, sizes, durations, strict keys.

A config file may name another with ``extends: <relative path>``; the named
file is loaded first and this one is merged over it: maps merge key by key,
lists and scalars replace. Cycles are errors.

The merged document is turned into frozen attrs classes by ``build``. Field
types drive the conversion: ``Size`` takes ``4MiB``-style text (or a plain
integer of bytes), ``Duration`` takes ``30s``, ``250ms``, ``5m``, ``1h``,
``2d`` (or a plain number of seconds). An unknown key, a wrong type or a
missing required key raises ``ConfigError`` naming the file that set it and
the full key path, so a daemon refuses to start before anything listens.
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, NewType, TypeVar, Union

import attrs
import yaml
from twisted.python import usage

Size = NewType("Size", int)
Duration = NewType("Duration", float)

T = TypeVar("T")
KeyPath = tuple[str, ...]

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B|B)?\s*\Z", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "pib": 1 << 50,
}  # fmt: skip
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*\Z")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(Exception):
    """A configuration problem, with the file and key path it concerns."""

    def __init__(self, message: str, *, file: str | None = None, key: KeyPath = ()) -> None:
        where = file or "<config>"
        if key:
            where += f": {'.'.join(key)}"
        super().__init__(f"{where}: {message}")
        self.message = message
        self.file = file
        self.key = key


def parse_size(value: object) -> int:
    """``"4MiB"`` -> 4194304; ``"10GB"`` -> 10**10; integers are bytes."""
    if isinstance(value, bool):
        raise ValueError("a size, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"a size like '4MiB', not {type(value).__name__}")
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"not a size: {value!r} (examples: 512KiB, 4MiB, 10GB, 1024)")
    number, unit = m.groups()
    return int(float(number) * _SIZE_UNITS[(unit or "b").lower()])


def parse_duration(value: object) -> float:
    """``"30s"`` -> 30.0; ``"250ms"`` -> 0.25; numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration, not a boolean")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration must not be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"a duration like '30s', not {type(value).__name__}")
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"not a duration: {value!r} (examples: 250ms, 30s, 5m, 1h)")
    number, unit = m.groups()
    return float(number) * _DURATION_UNITS[unit or "s"]


_Number = TypeVar("_Number", bound=float)


def positive(instance: object, attribute: attrs.Attribute[_Number], value: _Number) -> None:
    """attrs validator for counts, sizes and durations that must be above 0."""
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value}")


@attrs.frozen
class Loaded:
    """A merged YAML document and, for every key path, the file that set it."""

    data: dict[str, Any]
    sources: dict[KeyPath, str]
    file: str

    def source(self, key: KeyPath) -> str:
        for n in range(len(key), -1, -1):
            found = self.sources.get(key[:n])
            if found is not None:
                return found
        return self.file

    def over(self, defaults: Mapping[str, Any], name: str = "<defaults>") -> Loaded:
        """This document merged over ``defaults`` (maps merge, the rest replaces)."""
        base = from_mapping(defaults, name)
        sources = dict(base.sources)
        data = _merge(base.data, self.data, (), self.file, sources)
        sources.update(self.sources)
        return Loaded(data, sources, self.file)

    def section(self, *key: str) -> Loaded:
        """The sub-document at ``key`` (an empty map if absent), keeping sources."""
        data: Any = self.data
        for k in key:
            data = data.get(k, {}) if isinstance(data, dict) else {}
        if not isinstance(data, dict):
            raise ConfigError("must be a map", file=self.source(key), key=key)
        sources = {p[len(key) :]: f for p, f in self.sources.items() if p[: len(key)] == key}
        return Loaded(data, sources, self.source(key))


class DaemonOptions(usage.Options):
    """A daemon's twistd options: ``--config``. Subclasses name their config
    class; ``postOptions`` loads and checks it, so a bad file stops twistd
    with a usage message before anything listens."""

    config_class: type
    optParameters = [["config", "c", None, "YAML config file (supports extends:); built-in defaults when omitted"]]

    def postOptions(self) -> None:
        self["parsed"] = load_or_usage_error(self.config_class, self["config"])


def load_or_usage_error(cls: type[T], path: str | None) -> T:
    """Load and build a component's config for its twistd ``Options`` (the
    built-in defaults when ``path`` is None): any problem becomes a
    ``UsageError``, so twistd prints it without a traceback and exits before
    anything listens."""
    try:
        return build(cls, load(path) if path is not None else from_mapping({}, "<defaults>"))
    except ConfigError as e:
        raise usage.UsageError(str(e)) from None


def load(path: str) -> Loaded:
    """Read ``path`` and everything it extends, and merge them."""
    return _load(os.path.abspath(path), ())


def from_mapping(data: Mapping[str, Any], file: str = "<defaults>") -> Loaded:
    sources: dict[KeyPath, str] = {}
    _record(data, (), file, sources)
    return Loaded(dict(data), sources, file)


def _load(path: str, chain: tuple[str, ...]) -> Loaded:
    if path in chain:
        cycle = " -> ".join([*chain, path])
        raise ConfigError(f"extends cycle: {cycle}", file=path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError("file not found", file=path) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file=path) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}", file=path) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError("the top level must be a map", file=path)
    parent = doc.pop("extends", None)
    sources: dict[KeyPath, str] = {}
    merged: dict[str, Any] = {}
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError("must be a relative path", file=path, key=("extends",))
        base = _load(os.path.join(os.path.dirname(path), parent), (*chain, path))
        merged, sources = base.data, dict(base.sources)
    merged = _merge(merged, doc, (), path, sources)
    return Loaded(merged, sources, path)


def _merge(base: Any, over: Any, key: KeyPath, file: str, sources: dict[KeyPath, str]) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if not isinstance(k, str):
                raise ConfigError(f"key {k!r} must be text", file=file, key=key)
            out[k] = _merge(base.get(k), v, (*key, k), file, sources)
        sources.setdefault(key, file)
        return out
    # A replaced subtree forgets where its old children came from.
    for p in [p for p in sources if p[: len(key)] == key and len(p) > len(key)]:
        del sources[p]
    _record(over, key, file, sources)
    return over


def _record(value: Any, key: KeyPath, file: str, sources: dict[KeyPath, str]) -> None:
    sources[key] = file
    if isinstance(value, dict):
        for k, v in value.items():
            _record(v, (*key, str(k)), file, sources)


def build(cls: type[T], loaded: Loaded, key: KeyPath = ()) -> T:
    """Turn ``loaded`` (or the part at ``key``) into an instance of ``cls``."""
    data: Any = loaded.data
    for k in key:
        data = data.get(k, {}) if isinstance(data, dict) else data
    return typing.cast(T, _convert(cls, data, key, loaded))


def _convert(tp: Any, value: Any, key: KeyPath, loaded: Loaded) -> Any:
    """``value`` (from YAML) as the type ``tp``, or a ``ConfigError`` naming the file and ``key``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _convert_union(typing.get_args(tp), value, key, loaded)
    if attrs.has(tp):
        return _convert_attrs(tp, value, key, loaded)
    if tp in _SCALARS:
        return _SCALARS[tp](value, _failing(key, loaded))
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            raise _failing(key, loaded)(f"must be a list, not {_kind(value)}")
        return tuple(_convert(item, v, (*key, str(i)), loaded) for i, v in enumerate(value))
    if origin is dict:
        ktype, vtype = typing.get_args(tp)
        if not isinstance(value, dict):
            raise _failing(key, loaded)(f"must be a map, not {_kind(value)}")
        return {
            _convert(ktype, str(k) if ktype is not Size else k, (*key, str(k)), loaded): _convert(
                vtype, v, (*key, str(k)), loaded
            )
            for k, v in value.items()
        }
    raise TypeError(f"unsupported config type {tp!r}")


Fail = Callable[[str], ConfigError]


def _failing(key: KeyPath, loaded: Loaded) -> Fail:
    def fail(message: str) -> ConfigError:
        return ConfigError(message, file=loaded.source(key), key=key)

    return fail


def _convert_union(args: tuple[Any, ...], value: Any, key: KeyPath, loaded: Loaded) -> Any:
    if value is None and type(None) in args:
        return None
    rest = [a for a in args if a is not type(None)]
    if len(rest) == 1:
        return _convert(rest[0], value, key, loaded)
    # Several alternatives (text or a list, say): the first that takes the value wins.
    errors = []
    for alternative in rest:
        try:
            return _convert(alternative, value, key, loaded)
        except ConfigError as e:
            errors.append(e.message)
    raise _failing(key, loaded)(", or ".join(errors))


def _convert_attrs(tp: Any, value: Any, key: KeyPath, loaded: Loaded) -> Any:
    fail = _failing(key, loaded)
    if not isinstance(value, dict):
        raise fail(f"must be a map, not {_kind(value)}")
    fields = {f.name: f for f in attrs.fields(attrs.resolve_types(tp))}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "(none)"
        bad = (*key, unknown[0])
        raise ConfigError(f"unknown key (known keys here: {known})", file=loaded.source(bad), key=bad)
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(f.type, value[name], (*key, name), loaded)
        elif f.default is attrs.NOTHING:
            raise fail(f"missing required key {name!r}")
    try:
        return tp(**kwargs)
    except (ValueError, TypeError) as e:
        raise fail(str(e)) from None


def _parsed(parse: Callable[[Any], Any]) -> Callable[[Any, Fail], Any]:
    def convert(value: Any, fail: Fail) -> Any:
        try:
            return parse(value)
        except ValueError as e:
            raise fail(str(e)) from None

    return convert


def _checked(accepts: Callable[[Any], bool], what: str, cast: Callable[[Any], Any] = lambda v: v) -> Any:
    def convert(value: Any, fail: Fail) -> Any:
        if not accepts(value):
            raise fail(f"must be {what}, not {_kind(value)}")
        return cast(value)

    return convert


_SCALARS: dict[Any, Callable[[Any, Fail], Any]] = {
    Size: _parsed(parse_size),
    Duration: _parsed(parse_duration),
    bool: _checked(lambda v: isinstance(v, bool), "true or false"),
    int: _checked(lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: _checked(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number", float),
    str: _checked(lambda v: isinstance(v, str), "text"),
}


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "a map", list: "a list", str: "text", bool: "a boolean"}.get(type(value), type(value).__name__)
