"""The ``cluster:`` section: who the origins are and how blobs are placed over them.

```yaml
cluster:
  hosts: ["origin-1:15002", "origin-2:15002", "origin-3:15002"]   # or
  dns: "origins.kraken.internal:15002"
  replicas: 3
  scheme: http          # how members reach each other's HTTP API (https with ssl: listeners)
  refresh_interval: 10s
  health: {fails: 3, passes: 2, timeout: 3s}
```

Defaults and why (Kraken's values):

- ``replicas`` 3: each blob lives on three origins, so losing two at once
  loses no blob that was written back or replicated.
- ``refresh_interval`` 10 s: the DNS name is resolved, and every member
  health-checked, this often.
- ``health``: a member is skipped after 3 consecutive failed checks (about
  30 s) and used again after 2 consecutive passes; a check that has not
  answered after 3 s failed. A one-member cluster is always healthy.
"""

from __future__ import annotations

import attrs

from kraken.cluster.hosts import split_member
from kraken.config import Duration, positive


def _hosts(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError("hosts must be a list of 'host:port'")
    return tuple(value)


def _check_hosts(instance: object, attribute: object, value: tuple[str, ...] | None) -> None:
    if value is None:
        return
    if not value:
        raise ValueError("hosts must not be empty")
    for host in value:
        split_member(host)
    if len(set(value)) != len(value):
        raise ValueError(f"hosts lists a member twice: {sorted(value)}")


def _check_dns(instance: object, attribute: object, value: str | None) -> None:
    if value is not None:
        split_member(value)


@attrs.frozen
class HealthConfig:
    # Consecutive failed checks that make a member unhealthy.
    fails: int = attrs.field(default=3, validator=positive)
    # Consecutive passed checks that make an unhealthy member healthy again.
    passes: int = attrs.field(default=2, validator=positive)
    # A check that has not answered after this long failed.
    timeout: Duration = attrs.field(default=Duration(3.0), validator=positive)


@attrs.frozen
class ClusterConfig:
    # The members, "host:port" each (exactly one of hosts and dns).
    hosts: tuple[str, ...] | None = attrs.field(default=None, converter=_hosts, validator=_check_hosts)
    # A DNS name and port, "name:port": every address the name has is a member.
    dns: str | None = attrs.field(default=None, validator=_check_dns)
    # How many members hold each blob.
    replicas: int = attrs.field(default=3, validator=positive)
    # How members reach each other's HTTP API: http, or https when they listen with ssl:.
    scheme: str = attrs.field(default="http", validator=attrs.validators.in_(("http", "https")))
    # How often the DNS name is resolved and the members health-checked.
    refresh_interval: Duration = attrs.field(default=Duration(10.0), validator=positive)
    health: HealthConfig = attrs.field(factory=HealthConfig)

    def __attrs_post_init__(self) -> None:
        if (self.hosts is None) == (self.dns is None):
            raise ValueError("give exactly one of hosts (a list of host:port) and dns (name:port)")

    def url(self, member: str) -> str:
        """The base URL of a member's HTTP API."""
        return f"{self.scheme}://{member}"
