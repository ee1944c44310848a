"""The ``cleanup:`` section shared by the origin and the agent (``kraken.store.cleanup.CacheCleanup``)."""

from __future__ import annotations

import attrs

from kraken.config import Duration, positive


def _check_percent(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 < value <= 100:
        raise ValueError(f"{attribute.name} must be a percentage between 1 and 100, not {value}")


def _check_aggressive_tti(instance: CleanupConfig, attribute: object, value: float) -> None:
    if value > instance.tti:
        raise ValueError(f"aggressive_tti ({value}s) must not be above tti ({instance.tti}s)")


@attrs.frozen
class CleanupConfig:
    """Eviction of idle blobs from the cache (never from a backend).

    ``enabled`` unset means: on the origin, on when ``backends`` are set and
    OFF without them (there the cache holds the only copy of every blob, and
    evicting it loses it; set ``enabled: true`` to evict anyway, e.g. a pure
    cache in front of blobs that are pushed again; blobs waiting for
    write-back are never evicted); on an agent, on (its cache only holds
    copies; blobs being downloaded, seeded or served are never evicted).
    """

    # None: see above.
    enabled: bool | None = None
    # How often the cache is walked.
    interval: Duration = attrs.field(default=Duration(1800.0), validator=positive)
    # A blob not read for this long is evicted.
    tti: Duration = attrs.field(default=Duration(21600.0), validator=positive)
    # When the store's filesystem is at least this full (percent), aggressive_tti applies instead.
    aggressive_threshold: int = attrs.field(default=80, validator=_check_percent)
    aggressive_tti: Duration = attrs.field(default=Duration(3600.0), validator=[positive, _check_aggressive_tti])
