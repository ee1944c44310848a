"""Active health checks of the cluster's members.

Every ``interval`` seconds each member is checked (``check(member)``, in
production ``GET /health`` on it), all members at once, each check bounded
by ``timeout`` on the injected clock. A check fails when it answers
``False``, raises, or has not answered within ``timeout`` (it is then
cancelled). A healthy member becomes unhealthy after ``fails`` consecutive
failures, and an unhealthy one healthy again after ``passes`` consecutive
passes (Kraken's ``healthcheck.filter``: 3 and 2, 3 s timeout, every 10 s).

Members start healthy: a member just added is used until checks say
otherwise. A one-member cluster is always healthy and is not checked: with
no other member to turn to, skipping it would leave nothing. Members that
leave are forgotten, so one that comes back starts afresh.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import attrs
from twisted.application.internet import TimerService
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

if TYPE_CHECKING:
    from kraken.cluster.config import ClusterConfig

#: Checks one member: True when it is healthy.
Check = Callable[[str], Awaitable[bool]]
#: Told (member, healthy) each time a member changes state.
HealthListener = Callable[[str, bool], None]

DEFAULT_FAILS = 3
DEFAULT_PASSES = 2
DEFAULT_INTERVAL = 10.0
DEFAULT_TIMEOUT = 3.0


@attrs.define
class _State:
    healthy: bool = True
    fails: int = 0  # consecutive failures while healthy
    passes: int = 0  # consecutive passes while unhealthy
    error: str = ""  # why the last check failed


class HealthFilter(TimerService):
    """Which members are healthy, as a Service checking them on ``clock``.

    ``members`` is called at every round and by ``healthy`` (``HostList.members``,
    or ``lambda: hosts`` for a fixed list). ``healthy(member)`` is what
    ``Ring.locations`` takes. Listeners added with ``on_change`` are called
    with (member, healthy) on every change of state.
    """

    log = Logger()

    def __init__(
        self,
        check: Check,
        *,
        clock: IReactorTime,
        members: Callable[[], Iterable[str]],
        fails: int = DEFAULT_FAILS,
        passes: int = DEFAULT_PASSES,
        interval: float = DEFAULT_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if fails <= 0 or passes <= 0 or interval <= 0 or timeout <= 0:
            raise ValueError("fails, passes, interval and timeout must be positive")
        super().__init__(interval, self._tick)  # type: ignore[no-untyped-call]  # Twisted's TimerService is unannotated
        self.clock = clock
        self._clock = clock
        self.setName("health-filter")  # type: ignore[no-untyped-call]
        self._check = check
        self._members = members
        self._fails = fails
        self._passes = passes
        self._timeout = timeout
        self._states: dict[str, _State] = {}
        self._listeners: list[HealthListener] = []
        self._inflight: set[Deferred[bool]] = set()
        self._stopping = False
        #: Checks run, and how many of them failed.
        self.checks = 0
        self.failures = 0

    @classmethod
    def from_config(
        cls, config: ClusterConfig, check: Check, *, clock: IReactorTime, members: Callable[[], Iterable[str]]
    ) -> HealthFilter:
        """The health filter a ``ClusterConfig`` describes: its ``health`` section, every ``refresh_interval``."""
        h = config.health
        return cls(
            check,
            clock=clock,
            members=members,
            fails=h.fails,
            passes=h.passes,
            interval=config.refresh_interval,
            timeout=h.timeout,
        )

    def healthy(self, member: str) -> bool:
        """Whether ``member`` should be used now. Unknown members and the only member are healthy."""
        if len(self._current()) <= 1:
            return True
        state = self._states.get(member)
        return state is None or state.healthy

    def unhealthy(self) -> list[str]:
        """The members now marked unhealthy, sorted."""
        if len(self._current()) <= 1:
            return []
        return sorted(m for m, s in self._states.items() if not s.healthy)

    def on_change(self, listener: HealthListener) -> None:
        self._listeners.append(listener)

    # -- the service --

    def startService(self) -> None:
        self._stopping = False
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None]:
        self._stopping = True
        stopped: Deferred[None] = super().stopService()  # type: ignore[no-untyped-call]
        for d in list(self._inflight):
            d.cancel()  # the loop waits for this round: end it now
        return stopped

    def _tick(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._round())

    async def _round(self) -> None:
        try:
            await self.check_all()
        except Exception:
            self.log.failure("health check round failed")

    async def check_all(self) -> None:
        """Check every member once (all at once) and update their states."""
        current = self._current()
        for gone in [m for m in self._states if m not in current]:
            del self._states[gone]
        if len(current) <= 1:
            self._states.clear()  # the only member: always healthy, not checked
            return
        for m in current:
            self._states.setdefault(m, _State())
        probes = [Deferred.fromCoroutine(self._probe(m)) for m in current]
        await gatherResults(probes, consumeErrors=True)

    def _current(self) -> list[str]:
        return list(dict.fromkeys(self._members()))

    async def _probe(self, member: str) -> None:
        checking: Deferred[bool] = Deferred.fromCoroutine(self._ask(member))
        checking.addTimeout(self._timeout, self._clock)
        self._inflight.add(checking)
        self.checks += 1
        try:
            answer = await checking
            ok, error = answer is True, "" if answer is True else "answered unhealthy"
        except CancelledError:
            if self._stopping:
                return
            ok, error = False, "cancelled"
        except Exception as e:
            ok, error = False, str(e) or type(e).__name__
        finally:
            self._inflight.discard(checking)
        self._record(member, ok, error)

    async def _ask(self, member: str) -> bool:
        return await self._check(member)

    def _record(self, member: str, ok: bool, error: str) -> None:
        state = self._states.get(member)
        if state is None:  # left while being checked
            return
        if ok:
            state.fails = 0
            if not state.healthy:
                state.passes += 1
                if state.passes >= self._passes:
                    state.healthy, state.passes, state.error = True, 0, ""
                    self.log.info("cluster member {member} is healthy again", member=member)
                    self._notify(member, True)
            return
        self.failures += 1
        state.passes = 0
        state.error = error
        self.log.debug("health check of {member} failed: {error}", member=member, error=error)
        if state.healthy:
            state.fails += 1
            if state.fails >= self._fails:
                state.healthy, state.fails = False, 0
                self.log.warn(
                    "cluster member {member} is unhealthy after {fails} failed checks: {error}",
                    member=member,
                    fails=self._fails,
                    error=error,
                )
                self._notify(member, False)

    def _notify(self, member: str, healthy: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(member, healthy)
            except Exception:
                self.log.failure("a cluster health listener failed")
