"""Several replicas of one service (trackers, build-indexes): who they are, which failed lately, failing over.

A client config's ``tracker:`` or ``build_index:`` key takes one of three forms (``ServiceHostsConfig``):

```yaml
tracker: http://tracker:15003                                  # one base URL, as before
tracker: [http://tracker-1:15003, http://tracker-2:15003]      # a list of base URLs
tracker:                                                       # a map: a list or a DNS name, and the knobs
  dns: trackers.kraken.internal:15003   # every address of the name is a member (or hosts: [base URLs])
  scheme: https                         # how a DNS member is reached
  refresh_interval: 10s                 # how often the name is resolved
  down_for: 30s                         # a member that failed is skipped this long
```

``ServiceHosts`` is the runtime side. For each call it orders the members for a key by rendezvous hashing
(``kraken.cluster.ring.score``: every client puts the same member first for the same blob or repository, so
agents of one swarm meet on one tracker, and a tag read goes to the node the push went to), moves the members
that failed lately (``PassiveHealth``) to the end, and calls them in turn through ``Failover``: a network error,
a 429 or any 5xx moves on to the next member and marks the one that failed down for ``down_for`` seconds. When
every member is down they are all tried anyway, in the same order: a call never fails without trying.

TLS: every member is reached at its own URL, so its certificate is checked against its own host name (the
address, for members found by DNS, as for origins found by DNS).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kraken.cluster.failover import Failover, fails_over
from kraken.cluster.hosts import HostList, Resolver, split_member, system_resolver
from kraken.cluster.ring import score
from kraken.config import Duration, positive
from kraken.net.client import HTTPClientConfig
from kraken.net.retry import RetryPolicy, is_retryable

T = TypeVar("T")


class _Checked(Protocol):
    async def health(self) -> bool: ...


C = TypeVar("C", bound=_Checked)

DEFAULT_DOWN_FOR = 30.0


def check_base_url(url: object) -> str:
    """A service's base URL (``http://host:port``, no path), without its trailing slash; ``ValueError`` if not."""
    if not isinstance(url, str):
        raise ValueError(f"a base URL must be text, not {type(url).__name__}")
    parsed = urlsplit(url.rstrip("/"))
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.path or parsed.query:
        raise ValueError(f"{url!r} is not a base URL like http://host:15003")
    return url.rstrip("/")


def _urls(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError("hosts must be a list of base URLs")
    return tuple(value)


def _check_urls(instance: object, attribute: object, value: tuple[str, ...] | None) -> None:
    if value is None:
        return
    if not value:
        raise ValueError("hosts must not be empty")
    urls = [check_base_url(u) for u in value]
    if len(set(urls)) != len(urls):
        raise ValueError(f"hosts lists a member twice: {sorted(urls)}")


def _check_dns(instance: object, attribute: object, value: str | None) -> None:
    if value is not None:
        split_member(value)


@attrs.frozen
class ServiceHostsConfig:
    """The members of a replicated service, and how a client treats the ones that fail."""

    # Base URLs of the members (exactly one of hosts and dns).
    hosts: tuple[str, ...] | None = attrs.field(default=None, converter=_urls, validator=_check_urls)
    # A DNS name and port, "name:port": every address the name has is a member.
    dns: str | None = attrs.field(default=None, validator=_check_dns)
    # How DNS members are reached: http, or https when they listen with TLS.
    scheme: str = attrs.field(default="http", validator=attrs.validators.in_(("http", "https")))
    # How often the DNS name is resolved.
    refresh_interval: Duration = attrs.field(default=Duration(10.0), validator=positive)
    # A member that failed (unreachable, 429 or 5xx) is tried after the others for this long.
    down_for: Duration = attrs.field(default=Duration(DEFAULT_DOWN_FOR), validator=positive)

    def __attrs_post_init__(self) -> None:
        if (self.hosts is None) == (self.dns is None):
            raise ValueError("give exactly one of hosts (a list of base URLs) and dns (name:port)")

    @property
    def urls(self) -> tuple[str, ...] | None:
        """The static members' base URLs, without trailing slashes (None for DNS)."""
        return None if self.hosts is None else tuple(u.rstrip("/") for u in self.hosts)


#: What a client config's ``tracker`` or ``build_index`` key holds: one base URL, a list, or the map.
ServiceAddress = str | tuple[str, ...] | ServiceHostsConfig


def service_hosts(value: ServiceAddress) -> ServiceHostsConfig:
    """Any form of the key as a ``ServiceHostsConfig``."""
    if isinstance(value, ServiceHostsConfig):
        return value
    return ServiceHostsConfig(hosts=(value,) if isinstance(value, str) else tuple(value))


def check_service(instance: object, attribute: attrs.Attribute[Any], value: ServiceAddress) -> None:
    """Validate a client config's ``tracker`` or ``build_index`` (the error names the key)."""
    try:
        service_hosts(value)
    except ValueError as e:
        raise ValueError(f"{attribute.name}: {e}") from None


def describe(value: ServiceAddress) -> str:
    """The key's value for a start-up log line: the URLs, or the DNS name."""
    config = service_hosts(value)
    return ", ".join(config.urls) if config.urls is not None else f"{config.scheme}://{config.dns} (DNS)"


class PassiveHealth:
    """Which members failed lately: a member that fails is down for ``down_for`` seconds, or until it answers."""

    log = Logger()

    def __init__(self, clock: IReactorTime, down_for: float, kind: str) -> None:
        if down_for <= 0:
            raise ValueError("down_for must be positive")
        self._clock = clock
        self._down_for = down_for
        self._kind = kind
        self._until: dict[str, float] = {}
        #: Times a member went down.
        self.downs = 0

    def failed(self, member: str, error: BaseException) -> None:
        if not self.is_down(member):
            self.downs += 1
            self.log.warn(
                "{kind} {member} failed ({error}); trying it after the others for {down_for:.0f}s",
                kind=self._kind,
                member=member,
                error=str(error) or type(error).__name__,
                down_for=self._down_for,
            )
        self._until[member] = self._clock.seconds() + self._down_for

    def passed(self, member: str) -> None:
        if self._until.pop(member, None) is not None:
            self.log.info("{kind} {member} answers again", kind=self._kind, member=member)

    def is_down(self, member: str) -> bool:
        until = self._until.get(member)
        if until is None:
            return False
        if until <= self._clock.seconds():
            del self._until[member]
            return False
        return True

    def order(self, members: Sequence[str]) -> list[str]:
        """``members`` with the ones that are down moved to the end (each part in its given order)."""
        up = [m for m in members if not self.is_down(m)]
        return up + [m for m in members if m not in up]


class ServiceHosts:
    """Calls on the members of a replicated service, best first for a key, failing over (module docstring)."""

    def __init__(
        self,
        config: ServiceHostsConfig,
        *,
        clock: IReactorTime,
        policy: RetryPolicy,
        kind: str,
        resolve: Resolver | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._config = config
        self._clock = clock
        self._timeout = timeout
        self.kind = kind
        self.host_list: HostList | None = None
        if config.dns is not None:
            self.host_list = HostList(clock=clock, dns=config.dns, resolve=resolve, interval=config.refresh_interval)
            self.host_list.setName(f"{kind}-hosts")  # type: ignore[no-untyped-call]
        self.health = PassiveHealth(clock, config.down_for, kind)
        self._failover: Failover[bytes] = Failover(
            clock=clock,
            policy=policy,
            locations=self.locations,
            forget=lambda key: None,
            kind=kind,
            transient=is_retryable,  # as a single client's retries: the network, 429, 502, 503, 504
        )

    @classmethod
    def from_config(cls, value: ServiceAddress, *, reactor: Any, http: HTTPClientConfig, kind: str) -> ServiceHosts:
        """The members a client config's key names, failing over with the ``http_client`` block's backoff
        (and resolving DNS names with the reactor's resolver)."""
        config = service_hosts(value)
        resolve = None if config.dns is None else system_resolver(reactor)
        return cls(
            config,
            clock=reactor,
            policy=RetryPolicy.from_config(http),
            kind=kind,
            resolve=resolve,
            timeout=http.timeout,
        )

    def attach(self, parent: MultiService) -> None:
        """Run what the members need (the DNS resolution) as a child of the daemon's service."""
        if self.host_list is not None:
            self.host_list.setServiceParent(parent)  # type: ignore[no-untyped-call]

    @property
    def failovers(self) -> int:
        """Calls that went on to the next member."""
        return self._failover.failovers

    def members(self) -> tuple[str, ...]:
        """The members' base URLs now (empty until a DNS name first resolves)."""
        if self.host_list is None:
            urls = self._config.urls
            assert urls is not None
            return urls
        return tuple(f"{self._config.scheme}://{m}" for m in self.host_list.members())

    async def locations(self, key: bytes) -> list[str]:
        """The members for ``key``: by rendezvous score, the ones that failed lately last."""
        members = self.members()
        if not members:
            assert self.host_list is not None
            waiting: Deferred[tuple[str, ...]] = self.host_list.when_members()
            waiting.addTimeout(self._timeout, self._clock)
            try:
                await waiting
            except TimeoutError:  # a network error to Failover: the round is repeated after its backoff
                raise DNSLookupError(f"{self._config.dns} has no address yet") from None
            members = self.members()
        ranked = sorted(members, key=lambda m: (-score(key, m), m))
        return self.health.order(ranked)

    async def call(self, what: str, key: bytes, call: Callable[[str], Awaitable[T]], **fields: object) -> T:
        """``call(base_url)`` on the first member for ``key`` that answers; ``fields`` go into the log lines."""

        async def tracked(member: str) -> T:
            try:
                result = await call(member)
            except CancelledError:
                raise
            except Exception as e:
                if fails_over(e):
                    self.health.failed(member, e)
                raise
            self.health.passed(member)
            return result

        return await self._failover.call(what, key, tracked, **fields)


class MemberClients(Generic[C]):
    """The base of a component's client of several members: one single-member client per member
    (``make(base)``, with no retries of its own: ``ServiceHosts`` fails over and repeats rounds instead)."""

    def __init__(self, hosts: ServiceHosts, make: Callable[[str], C]) -> None:
        self.hosts = hosts
        self._make = make
        self._clients: dict[str, C] = {}

    def client(self, base: str) -> C:
        found = self._clients.get(base)
        if found is None:
            found = self._clients[base] = self._make(base)
        return found

    async def health(self) -> bool:
        """True if any member answers its health check."""
        for base in await self.hosts.locations(b""):
            if await self.client(base).health():
                return True
        return False
