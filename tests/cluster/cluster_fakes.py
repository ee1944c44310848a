"""Fakes for the cluster tests: a DNS resolver and a health check, both answering on demand."""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.defer import CancelledError, Deferred


class FakeResolver:
    """``answers[name]``: a list of addresses, an exception to raise, or ``HANG`` (never answers)."""

    HANG = object()

    def __init__(self, answers: dict[str, object] | None = None) -> None:
        self.answers: dict[str, object] = dict(answers or {})
        self.calls: list[str] = []
        self.cancelled = 0

    async def __call__(self, name: str) -> Iterable[str]:
        self.calls.append(name)
        answer = self.answers.get(name, [])
        if answer is self.HANG:
            never: Deferred[list[str]] = Deferred()
            try:
                return await never
            except CancelledError:
                self.cancelled += 1
                raise
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, list)
        return list(answer)


class FakeCheck:
    """``answers[member]``: True, False, an exception, or ``HANG``; members not listed pass."""

    HANG = object()

    def __init__(self) -> None:
        self.answers: dict[str, object] = {}
        self.calls: list[str] = []
        self.cancelled: list[str] = []

    async def __call__(self, member: str) -> bool:
        self.calls.append(member)
        answer = self.answers.get(member, True)
        if answer is self.HANG:
            never: Deferred[bool] = Deferred()
            try:
                return await never
            except CancelledError:
                self.cancelled.append(member)
                raise
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, bool)
        return answer
