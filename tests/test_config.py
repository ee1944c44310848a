"""kraken.config: extends, deep merge, sizes, durations, and errors that name
the file and the key path."""

import attrs
import pytest

from kraken import config
from kraken.config import ConfigError, Duration, Size, build, load, parse_duration, parse_size


@attrs.frozen
class Store:
    root: str
    max_size: Size = Size(10)


@attrs.frozen
class Component:
    listen: str = "tcp:1"
    store: Store = attrs.field(factory=lambda: Store("/default"))
    ttl: Duration = Duration(30.0)
    enabled: bool = True
    workers: int = 2
    tags: tuple[str, ...] = ()
    steps: dict[Size, Size] = attrs.field(factory=dict)
    optional: str | None = None


def write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("4MiB", 4 << 20),
        ("4 MiB", 4 << 20),
        ("10GB", 10**10),
        ("1.5KiB", 1536),
        ("512", 512),
        (512, 512),
        ("1kb", 1000),
        ("0", 0),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["4 MegaBytes", "-1", -1, True, "MiB", "", None, [1]])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    "text,expected", [("30s", 30.0), ("250ms", 0.25), ("5m", 300.0), ("1h", 3600.0), ("2d", 172800.0), (1.5, 1.5)]
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["soon", "5 minutes", "-1s", -1, False, "1w", None])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_extends_deep_merge(tmp_path):
    write(tmp_path, "base.yaml", "store: {root: /a, max_size: 4MiB}\nttl: 1m\ntags: [a, b]\n")
    path = write(
        tmp_path,
        "sub/c.yaml",
        "extends: ../base.yaml\nstore: {max_size: 1GiB}\ntags: [c]\nsteps: {0: 4MiB, 2GiB: 8MiB}\n",
    )
    c = build(Component, load(path))
    assert c.store == Store("/a", 1 << 30)  # maps merge key by key
    assert c.ttl == 60.0  # inherited
    assert c.tags == ("c",)  # lists replace
    assert c.steps == {0: 4 << 20, 2 << 30: 8 << 20}
    assert c.listen == "tcp:1"  # attrs default


def test_defaults_apply_to_an_empty_file(tmp_path):
    assert build(Component, load(write(tmp_path, "c.yaml", ""))) == Component()


def test_unknown_key_names_file_and_key_path(tmp_path):
    write(tmp_path, "base.yaml", "store: {root: /a}\n")
    path = write(tmp_path, "c.yaml", "extends: base.yaml\nstore: {bogus: 1}\n")
    with pytest.raises(ConfigError) as e:
        build(Component, load(path))
    assert str(e.value).startswith(f"{path}: store.bogus: unknown key")
    assert e.value.key == ("store", "bogus")


def test_error_names_the_file_that_set_the_key(tmp_path):
    base = write(tmp_path, "base.yaml", "ttl: soon\n")
    path = write(tmp_path, "c.yaml", "extends: base.yaml\nworkers: 3\n")
    with pytest.raises(ConfigError) as e:
        build(Component, load(path))
    assert str(e.value).startswith(f"{base}: ttl: not a duration")


@pytest.mark.parametrize(
    "text,key,message",
    [
        ("workers: two\n", "workers", "must be an integer"),
        ("workers: true\n", "workers", "must be an integer"),
        ("enabled: 1\n", "enabled", "must be true or false"),
        ("store: [1]\n", "store", "must be a map"),
        ("store: {max_size: 1}\n", "store", "missing required key 'root'"),
        ("tags: a\n", "tags", "must be a list"),
        ("tags: [1]\n", "tags.0", "must be text"),
        ("listen: null\n", "listen", "must be text"),
        ("store: {root: /x, max_size: lots}\n", "store.max_size", "not a size"),
    ],
)
def test_type_errors(tmp_path, text, key, message):
    path = write(tmp_path, "c.yaml", text)
    with pytest.raises(ConfigError) as e:
        build(Component, load(path))
    assert f"{path}: {key}: " in str(e.value)
    assert message in str(e.value)


def test_optional_accepts_null(tmp_path):
    assert build(Component, load(write(tmp_path, "c.yaml", "optional: null\n"))).optional is None


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load(str(tmp_path / "nope.yaml"))


def test_missing_extended_file_is_named(tmp_path):
    path = write(tmp_path, "c.yaml", "extends: gone.yaml\n")
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(tmp_path / "gone.yaml") in str(e.value)


def test_extends_cycle(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    path = write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends cycle"):
        load(path)


@pytest.mark.parametrize("text", ["[1, 2]\n", "just text\n", "a: [\n"])
def test_bad_documents(tmp_path, text):
    with pytest.raises(ConfigError):
        load(write(tmp_path, "c.yaml", text))


def test_over_defaults_keeps_user_sources(tmp_path):
    path = write(tmp_path, "c.yaml", "store: {max_size: nope}\n")
    merged = load(path).over({"store": {"root": "/d"}})
    with pytest.raises(ConfigError) as e:
        build(Component, merged)
    assert str(e.value).startswith(f"{path}: store.max_size")
    ok = load(write(tmp_path, "d.yaml", "store: {max_size: 1KiB}\n")).over({"store": {"root": "/d"}})
    assert build(Component, ok).store == Store("/d", 1024)


def test_load_or_usage_error(tmp_path):
    from twisted.python import usage

    path = write(tmp_path, "c.yaml", "nope: 1\n")
    with pytest.raises(usage.UsageError, match="nope: unknown key"):
        config.load_or_usage_error(Component, path)
