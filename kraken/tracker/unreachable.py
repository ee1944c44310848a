"""When a peer that agents report unreachable is hidden from announce answers.

An agent names, in its announce (``"unreachable"``), the peers of that blob
it failed to reach since its last announce. The tracker cannot check a
report, and a reporter can lie, so a report only ever hides a peer for a
bounded time, and how long depends on how many announcing addresses agree:

- Reports from at least ``quorum`` distinct source addresses within
  ``hold`` seconds hide the peer until ``hold`` after the latest report:
  while agents keep failing to reach it, it stays hidden.
- A lone reporting address (every agent behind one NAT, a loopback test,
  or one liar) hides the peer for ``hold`` seconds from its first report;
  its further reports neither extend that nor start a new hiding until
  ``2 * hold`` after the first. So one address can keep a peer hidden at
  most half the time, and everyone else still gets it the other half.

Origins are never hidden: they come from the origin cluster, not from the
peer store, and every answer lists them first. Nor does a peer's own
announce bring it back early: whoever made up a fake peer can announce it
as often as it likes.

The state is one small ``Reports`` per reported peer, kept on the peer's
store entry, so it goes when the entry goes and costs nothing for a peer
nobody reports.
"""

from __future__ import annotations

import attrs


class Reports:
    """The reports about one peer of one blob: the latest report by each
    source address (at most ``max_reporters``), when the current lone
    hiding began, and until when the peer is hidden."""

    __slots__ = ("lone_since", "reporters", "until")

    def __init__(self) -> None:
        self.reporters: dict[str, float] = {}
        self.lone_since = float("-inf")
        self.until = float("-inf")

    def hidden(self, now: float) -> bool:
        return now < self.until


@attrs.frozen
class UnreachablePolicy:
    """How reports turn into hiding (see the module's docstring).

    Every ``until`` this policy sets is ``now + hold`` for the ``now`` of
    the report, so a later report never sets an earlier time: the peer store
    keeps its hidden peers in the order they come back in without sorting.
    """

    hold: float
    quorum: int = 2
    max_reporters: int = 8

    def __attrs_post_init__(self) -> None:
        if self.hold <= 0 or self.quorum < 1 or self.max_reporters < self.quorum:
            raise ValueError("hold and quorum must be positive, and max_reporters at least quorum")

    def report(self, reports: Reports | None, source: str, now: float) -> Reports:
        """``reports`` (or a new one) after ``source`` reported the peer unreachable at ``now``."""
        if reports is None:
            reports = Reports()
        reporters = reports.reporters
        for old in [s for s, t in reporters.items() if now - t >= self.hold]:
            del reporters[old]
        if source in reporters or len(reporters) < self.max_reporters:
            reporters[source] = now
        if len(reporters) >= self.quorum:
            reports.until = now + self.hold
        elif now >= reports.lone_since + 2 * self.hold:
            reports.lone_since = now
            reports.until = now + self.hold
        return reports
