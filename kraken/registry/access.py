"""Who may pull and push which repositories: the access rules of HTTP Basic users.

A rule names ``users`` and/or ``groups`` (``"*"`` among the users: every
authenticated user), the ``repositories`` it covers and the ``actions`` it
grants (``pull``, ``push``, ``delete``; none, ``[]``, denies: a rule before a
broader one makes an exception). For a user and a repository the
first rule that names the user (or one of their groups) and whose pattern
matches the repository decides: its actions are what the user may do there,
and nothing else. No rule matching: nothing (default deny). Pushing needs
``pull`` and ``push`` on the repository, as with tokens, so a pushing user's
rule lists both.

``repositories`` is a regular expression when it starts with ``^`` (matched
against the whole name, ``re.fullmatch``), otherwise a glob (``fnmatch``,
case-sensitive): ``*`` matches any run of characters, ``/`` included, so
``team-a/*`` covers ``team-a/app`` and ``team-a/tools/lint``; ``?`` one
character; ``[abc]`` one of them.

With rules, what is not a repository (the ``_catalog``, which names every
repository) is denied to every user. Without rules this module is not used:
every authenticated user may do everything, as before.

Pure: no I/O; building a rule checks its pattern and actions (``ValueError``
naming the key).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence

import attrs

ACTIONS = ("pull", "push", "delete")
EVERY_USER = "*"


def repository_pattern(value: str) -> re.Pattern[str]:
    """``value`` (a glob, or a regular expression starting with ``^``) compiled; ValueError naming it."""
    if not value:
        raise ValueError("repositories must not be empty (use '*' for every repository)")
    if not value.startswith("^"):
        return re.compile(fnmatch.translate(value))
    try:
        return re.compile(value)
    except re.error as e:
        raise ValueError(f"repositories {value!r}: not a regular expression ({e})") from None


@attrs.frozen
class Rule:
    """One access rule (see the module)."""

    users: frozenset[str]
    groups: frozenset[str]
    repositories: str
    actions: frozenset[str]
    pattern: re.Pattern[str] = attrs.field(eq=False, repr=False)

    @classmethod
    def make(cls, users: Iterable[str], groups: Iterable[str], repositories: str, actions: Iterable[str]) -> Rule:
        users, groups, actions = frozenset(users), frozenset(groups), tuple(actions)
        if not users and not groups:
            raise ValueError("a rule names users or groups (users: ['*'] for every user)")
        unknown = sorted(set(actions) - set(ACTIONS))
        if unknown:
            raise ValueError(f"actions: unknown action {unknown[0]!r} (known: {', '.join(ACTIONS)})")
        return cls(users, groups, repositories, frozenset(actions), repository_pattern(repositories))

    def names(self, user: str, groups: frozenset[str]) -> bool:
        return EVERY_USER in self.users or user in self.users or not self.groups.isdisjoint(groups)

    def covers(self, repository: str) -> bool:
        return self.pattern.fullmatch(repository) is not None


class AccessRules:
    """The rules in order, and the groups they may name (``{group: members}``)."""

    def __init__(self, rules: Sequence[Rule], groups: Mapping[str, Iterable[str]] | None = None) -> None:
        self.rules = tuple(rules)
        self._groups: dict[str, frozenset[str]] = {}
        for group, members in (groups or {}).items():
            for member in members:
                self._groups[member] = self._groups.get(member, frozenset()) | {group}

    def actions(self, user: str, repository: str) -> frozenset[str]:
        """What ``user`` may do in ``repository``: the first matching rule's actions, or nothing."""
        groups = self._groups.get(user, frozenset())
        for rule in self.rules:
            if rule.names(user, groups) and rule.covers(repository):
                return rule.actions
        return frozenset()

    def grants(self, user: str) -> UserGrants:
        return UserGrants(self, user)


@attrs.frozen
class UserGrants:
    """What one authenticated user may do (the registry's ``Granted``); a refusal is 403 DENIED."""

    rules: AccessRules
    user: str

    def allows(self, type: str, name: str, action: str) -> bool:
        return type == "repository" and action in self.rules.actions(self.user, name)
