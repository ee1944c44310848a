"""Who the cluster's members are: a static list, or a DNS name resolved periodically.

Members are ``host:port`` strings (``[v6addr]:port`` for IPv6 addresses),
the form ``kraken.cluster.ring.Ring`` places blobs over. A DNS host list
(``dns: "origins.example:15002"``) resolves the name every ``interval``
seconds through an injected resolver (``system_resolver(reactor)`` in
production) and makes every address it returns a member on that port. A
failed, late or empty resolution is logged and changes nothing: the last
good list stays (Kraken keeps it too), so a DNS hiccup never empties the
ring.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IHostResolution,
    IReactorPluggableNameResolver,
    IReactorTime,
    IResolutionReceiver,
)
from twisted.logger import Logger
from zope.interface import implementer

from kraken.core.address import canonical_host, join_host_port, split_host_port

if TYPE_CHECKING:
    from kraken.cluster.config import ClusterConfig

#: Looks a name up: every address (as text) it has now.
Resolver = Callable[[str], Awaitable[Iterable[str]]]
#: Told the new members whenever they change.
Listener = Callable[[tuple[str, ...]], None]

DEFAULT_INTERVAL = 10.0
DEFAULT_RESOLVE_TIMEOUT = 5.0


def split_member(text: str) -> tuple[str, int]:
    """``"10.0.0.5:15002"``, ``"origin-1:15002"`` or ``"[::1]:15002"`` -> (host, port).

    An IPv6 address without brackets, or with a zone id, is refused (``kraken.core.address``)."""
    return split_host_port(text)


def join_member(host: str, port: int) -> str:
    """(host, port) -> ``"host:port"``, with brackets around an IPv6 address (in its canonical form: a DNS
    answer's ``0:0::1`` joins as ``[::1]``)."""
    return join_host_port(canonical_host(host), port)


@implementer(IResolutionReceiver)
class _Addresses:
    def __init__(self) -> None:
        self.found: list[str] = []
        self.done: Deferred[list[str]] = Deferred()

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        host = getattr(address, "host", None)
        if isinstance(host, str) and host not in self.found:
            self.found.append(host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.found)


def system_resolver(reactor: IReactorPluggableNameResolver) -> Resolver:
    """A ``Resolver`` through the reactor's name resolver (``getaddrinfo`` in a
    thread by default): every IPv4 and IPv6 address of the name. A name that
    does not resolve gives no addresses."""

    async def resolve(name: str) -> list[str]:
        receiver = _Addresses()
        reactor.nameResolver.resolveHostName(receiver, name)
        return await receiver.done

    return resolve


class HostList(TimerService):
    """The members of the cluster, as a Service.

    Exactly one of ``hosts`` (a static list: ``members()`` is that list from
    the start, nothing runs) or ``dns`` (``"name:port"``, resolved with
    ``resolve`` when the service starts and every ``interval`` seconds after,
    each resolution bounded by ``timeout`` on ``clock``). A DNS list has no
    members until its first good resolution; ``when_members()`` waits for it.

    Listeners added with ``on_change`` are called with the new members each
    time they change; one that raises is logged and the others still run.
    """

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        hosts: Sequence[str] | None = None,
        dns: str | None = None,
        resolve: Resolver | None = None,
        interval: float = DEFAULT_INTERVAL,
        timeout: float = DEFAULT_RESOLVE_TIMEOUT,
    ) -> None:
        if (hosts is None) == (dns is None):
            raise ValueError("give exactly one of hosts and dns")
        if interval <= 0 or timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        super().__init__(interval, self._tick)  # type: ignore[no-untyped-call]  # Twisted's TimerService is unannotated
        self.clock = clock
        self._clock = clock
        self.setName("host-list")  # type: ignore[no-untyped-call]
        self._timeout = timeout
        self._members: tuple[str, ...] = ()
        self._name: str | None = None
        self._port = 0
        self._resolve = resolve
        if hosts is not None:
            if isinstance(hosts, str):
                raise ValueError("hosts must be a list of 'host:port', not one string")
            if not hosts:
                raise ValueError("hosts must not be empty")
            for h in hosts:
                split_member(h)
            self._members = tuple(sorted(set(hosts)))
        else:
            assert dns is not None
            if resolve is None:
                raise ValueError("a dns host list needs a resolver")
            self._name, self._port = split_member(dns)
        self._listeners: list[Listener] = []
        self._waiting: list[Deferred[tuple[str, ...]]] = []
        self._resolving: Deferred[Iterable[str]] | None = None
        self._stopping = False
        #: Resolutions tried, and how many of them failed or found nothing.
        self.resolutions = 0
        self.failures = 0

    @classmethod
    def from_config(cls, config: ClusterConfig, *, clock: IReactorTime, resolve: Resolver | None = None) -> HostList:
        """The host list a ``ClusterConfig`` describes (``resolve`` is needed for ``dns``)."""
        return cls(
            clock=clock,
            hosts=config.hosts,
            dns=config.dns,
            resolve=resolve,
            interval=config.refresh_interval,
        )

    @property
    def static(self) -> bool:
        return self._name is None

    def members(self) -> tuple[str, ...]:
        """The members now, sorted (empty until a DNS list first resolves)."""
        return self._members

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def when_members(self) -> Deferred[tuple[str, ...]]:
        """A new Deferred that fires with the members once there are any (at once if there are)."""
        if self._members:
            return succeed(self._members)
        d: Deferred[tuple[str, ...]] = Deferred(self._waiting.remove)
        self._waiting.append(d)
        return d

    # -- the service --

    def startService(self) -> None:
        self._stopping = False
        if self.static:
            Service.startService(self)
        else:
            super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None] | None:
        if self.static:
            Service.stopService(self)
            return None
        self._stopping = True
        stopped: Deferred[None] = super().stopService()  # type: ignore[no-untyped-call]
        if self._resolving is not None:
            self._resolving.cancel()  # the loop waits for this resolution: end it now
        return stopped

    def _tick(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.refresh())

    async def refresh(self) -> None:
        """Resolve the name once and update the members; never raises."""
        if self._name is None or self._resolve is None:
            return
        self.resolutions += 1
        resolving: Deferred[Iterable[str]] = Deferred.fromCoroutine(self._lookup(self._resolve, self._name))
        resolving.addTimeout(self._timeout, self._clock)
        self._resolving = resolving
        try:
            addresses = await resolving
            found = tuple(sorted({join_member(a, self._port) for a in addresses}))
        except Exception as e:
            if self._stopping and isinstance(e, CancelledError):
                return
            self.failures += 1
            self.log.warn(
                "resolving cluster name {name} failed ({error}); keeping {members}",
                name=self._name,
                error=str(e) or type(e).__name__,
                members=list(self._members),
            )
            return
        finally:
            self._resolving = None
        if not found:
            self.failures += 1
            self.log.warn(
                "cluster name {name} resolved to no address; keeping {members}",
                name=self._name,
                members=list(self._members),
            )
            return
        self._set(found)

    @staticmethod
    async def _lookup(resolve: Resolver, name: str) -> Iterable[str]:
        return list(await resolve(name))

    def _set(self, members: tuple[str, ...]) -> None:
        if members == self._members:
            return
        old, self._members = self._members, members
        self.log.info("cluster members are now {members} (were {old})", members=list(members), old=list(old))
        for listener in list(self._listeners):
            try:
                listener(members)
            except Exception:
                self.log.failure("a cluster membership listener failed")
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(members)
